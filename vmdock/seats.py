"""Seats: several instances of labs on one host, with no name, address or port shared.

An instance of a lab is (vmdock home, lab): two students on one classroom
server, or two CI jobs, bring up the same lab under two homes.  Everything
vmdock names on the host (containers, libvirt domains and networks, VirtualBox
VMs, docker networks) carries the instance's short id, and its labels say
whose it is.  Each instance gets its own /28 of the private-network pool,
leased host-wide under a lock, after a look at the networks the host already
has.  Forwarded host ports are the book's ports plus the seat's offset
(``vmdock.hostports``).
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

from .errors import BusyError, ConfigError, StateError
from .model import LAB_PREFIX

ID_LENGTH = 6
DEFAULT_HOST_DIR = Path("/var/tmp/vmdock")
# VirtualBox (6.1.28+) allows host-only networks in 192.168.56.0/21 only: each
# instance gets a /28 of it (13 machines at most; the first address is the gateway).
NETWORK_POOL = ipaddress.ip_network("192.168.56.0/21")
LOCK_TIMEOUT = 60.0
LABEL_PREFIX = "vmdock."


def host_dir() -> Path:
    """The host-wide folder shared by every user's vmdock (``VMDOCK_HOST_DIR`` overrides).

    It is world-writable with the sticky bit, like /tmp: each user's lease
    files are their own, and the lock file is open to all.
    """
    from . import settings

    path = settings.current().host_dir or DEFAULT_HOST_DIR
    try:
        path.mkdir(parents=True, exist_ok=True)
        if path.stat().st_uid == os.geteuid() and (path.stat().st_mode & 0o7777) != 0o1777:
            path.chmod(0o1777)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot use the host-wide vmdock folder: {exc.strerror or exc}",
            hint="it must be writable by every vmdock user (mode 1777, like /tmp); VMDOCK_HOST_DIR points elsewhere",
        ) from None
    return path


# -- instances ------------------------------------------------------------------


def instance_id(home: Path | str, lab: str) -> str:
    """A short id of (vmdock home, lab): 6 hex digits of sha256(realpath(home) NUL lab)."""
    key = f"{os.path.realpath(home)}\0{lab}".encode()
    return hashlib.sha256(key).hexdigest()[:ID_LENGTH]


@dataclass(frozen=True)
class Instance:
    """One lab under one vmdock home, and the names it takes on the host."""

    home: Path
    lab: str

    @property
    def id(self) -> str:
        return instance_id(self.home, self.lab)

    @property
    def prefix(self) -> str:
        """Every host-wide name of the instance starts so: vmdock-<id>-<lab>-."""
        return f"vmdock-{self.id}-{self.lab}-"

    def machine_name(self, machine: str) -> str:
        """Container, libvirt domain (default_prefix + machine) and VirtualBox VM name."""
        return self.prefix + machine

    @property
    def network_name(self) -> str:
        return f"vmdock-{self.id}-{self.lab}"

    def labels(self, machine: str | None = None) -> dict[str, str]:
        labels = {
            "vmdock.instance": self.id,
            "vmdock.home": str(self.home),
            "vmdock.lab": self.lab,
        }
        if machine is not None:
            labels["vmdock.machine"] = machine
        return labels


@dataclass(frozen=True)
class Seat:
    """Where an instance sits on the host: its names, its private network, its port offset."""

    instance: Instance
    subnet: ipaddress.IPv4Network
    port_offset: int = 0


def label_args(labels: dict[str, str]) -> list[str]:
    """``--label k=v`` pairs for docker create / docker network create."""
    out: list[str] = []
    for key, value in labels.items():
        out += ["--label", f"{key}={value}"]
    return out


# -- subnets ----------------------------------------------------------------------


def pool_blocks() -> list[ipaddress.IPv4Network]:
    return list(NETWORK_POOL.subnets(new_prefix=LAB_PREFIX))  # type: ignore[arg-type]


def machine_ips(subnet: ipaddress.IPv4Network, machines: list[str]) -> dict[str, str]:
    """Machine name → address in the instance's block (the first address is the gateway)."""
    hosts = list(subnet.hosts())[1:]
    if len(machines) > len(hosts):
        raise ValueError(f"at most {len(hosts)} machines fit a lab's network")
    return {m: str(hosts[i]) for i, m in enumerate(machines)}


def free_block(taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """The first block of the pool that overlaps none of ``taken``."""
    taken = [t for t in taken if t.version == 4 and t.prefixlen > 0]
    for block in pool_blocks():
        if not any(block.overlaps(t) for t in taken):
            return block
    return None


@dataclass(frozen=True)
class Lease:
    """A block of the pool held by an instance; a file in ``host_dir()/subnets``."""

    subnet: ipaddress.IPv4Network
    instance: str
    home: str
    lab: str
    path: Path

    def is_stale(self) -> bool:
        """Its home no longer has the lab's folder (deleted without `vmdock destroy`).

        A folder vmdock may not look into (another user's home), or a lease
        file it cannot read, is never stale.
        """
        if self.home == "?":
            return False
        try:
            os.stat(Path(self.home) / "labs" / self.lab)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return False


def _lease_file(folder: Path, subnet: ipaddress.IPv4Network) -> Path:
    return folder / (str(subnet).replace("/", "_") + ".json")


def read_leases(folder: Path) -> list[Lease]:
    """Every lease on the host; an unreadable lease file still holds its block."""
    leases = []
    for f in sorted(folder.glob("*.json")):
        try:
            subnet = ipaddress.ip_network(f.stem.replace("_", "/"))
        except ValueError:
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            owner = (str(data["instance"]), str(data["home"]), str(data["lab"]))
            leases.append(Lease(subnet, *owner, f))  # type: ignore[arg-type]
        except (OSError, ValueError, KeyError, TypeError):
            leases.append(Lease(subnet, "?", "?", "?", f))  # type: ignore[arg-type]
    return leases


@contextlib.contextmanager
def host_lock(what: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the host-wide allocation lock: one allocation at a time, whoever runs it."""
    path = host_dir() / "seats.lock"
    lock = filelock.FileLock(str(path), timeout=timeout, mode=0o666)
    try:
        with lock:
            yield
    except filelock.Timeout:
        raise BusyError(
            f"another vmdock on this host has held {path} for {timeout:.0f}s ({what})",
            hint="wait for it; a vmdock process that died frees the lock at once",
        ) from None


def allocate_subnet(
    inst: Instance,
    host_networks: Callable[[], list[tuple[ipaddress.IPv4Network, str]]],
    folder: Path | None = None,
    preferred: ipaddress.IPv4Network | None = None,
) -> ipaddress.IPv4Network:
    """The instance's block: its lease if it has one, else ``preferred`` (the block it had
    before: its lab images' steps ran with those addresses) when that is free, else the
    first free block; leased now.

    Free means: no other instance's lease and no network the host has
    (``host_networks()``: (network, where it was seen)) overlaps it.  The
    caller holds ``host_lock``.
    """
    folder = folder or host_dir() / "subnets"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o1777)  # every user's leases side by side, each removable by its owner only
    taken: list[ipaddress.IPv4Network] = []
    for lease in read_leases(folder):
        if lease.instance == inst.id and lease.home == str(inst.home) and lease.lab == inst.lab:
            return lease.subnet
        if lease.is_stale() and _release(lease):
            continue
        taken.append(lease.subnet)
    taken += [net for net, _ in host_networks()]
    usable = preferred is not None and preferred in pool_blocks() and not any(preferred.overlaps(t) for t in taken)
    block = preferred if usable else free_block(taken)
    if block is None:
        raise StateError(
            f"no free /{LAB_PREFIX} left in {NETWORK_POOL} for the lab's private network",
            lab=inst.lab,
            hint="`vmdock status --all` lists the labs on this host; `vmdock destroy` the ones no longer used",
        )
    tmp = folder / f".{os.getpid()}.{inst.id}.tmp"
    tmp.write_text(json.dumps({"instance": inst.id, "home": str(inst.home), "lab": inst.lab}) + "\n", encoding="utf-8")
    tmp.chmod(0o644)
    os.rename(tmp, _lease_file(folder, block))
    return block


def release_subnet(inst: Instance, folder: Path | None = None) -> list[ipaddress.IPv4Network]:
    """Give the instance's blocks back to the pool (after destroy)."""
    folder = folder or host_dir() / "subnets"
    if not folder.is_dir():
        return []
    return [
        lease.subnet
        for lease in read_leases(folder)
        if lease.instance == inst.id and lease.home == str(inst.home) and _release(lease)
    ]


def _release(lease: Lease) -> bool:
    try:
        lease.path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # another user's lease in the sticky folder: it stays taken
    return True


# -- orphans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """A machine found on the host by its labels or its name."""

    provider: str
    id: str  # container id, domain uuid
    name: str
    instance: str
    lab: str
    home: str
    machine: str
    state: str


def orphans(found: list[Machine], own_instance: str, vagrant_ids: Iterable[str]) -> list[Machine]:
    """The instance's machines that Vagrant's state does not know (a run killed inside `vagrant up`)."""
    known = {i for i in vagrant_ids if i}
    return [m for m in found if m.instance == own_instance and m.id not in known]
