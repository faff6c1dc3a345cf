"""The provider contract: what vmdock asks of a Vagrant provider.

A provider is one module of this package with one class implementing
``Provider`` and one line in the registry (``vmdock/providers/__init__.py``),
plus its block in ``Vagrantfile.j2``.  Nothing else in vmdock names a
provider: the engine, render, doctor and the CLI ask the registry.

Vagrant's own state names are the lingua franca (``running``, ``stopped``,
``poweroff``, ``shutoff``, ``not_created``, …): ``native_status`` answers in
them without running ``vagrant`` (a `vagrant status` costs 1–2 s).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from ..errors import ProviderError

if TYPE_CHECKING:
    from ..driver import SshConfig
    from ..events import Events
    from ..labimages import LabImage
    from ..loader import LoadedLab
    from ..runlog import Log
    from ..seats import Instance, Machine, Seat

#: Vagrant's state of a machine that does not exist (every provider uses it).
NOT_CREATED = "not_created"
RUNNING = "running"

SettingsChange = Literal["recreate", "reload"]


@dataclass(frozen=True)
class Probe:
    provider: str
    usable: bool
    reason: str


@dataclass(frozen=True)
class Removal:
    """What ``Provider.destroy`` removed (said), and what starts deleting the rest."""

    said: list[str]
    finish: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Pruned:
    image: str
    removed: bool
    why: str


def unix_socket_answers(path: str, request: bytes | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a daemon answers on a Unix socket: (answers, first line or why not)."""
    if not os.path.exists(path):
        return False, f"{path} does not exist"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        if request:
            s.sendall(request)
            data = s.recv(256)
            if not data:
                return False, f"{path} closed the connection"
            return True, data.split(b"\r\n", 1)[0].decode("latin-1")
        return True, "socket answers"
    except OSError as exc:
        return False, f"{path}: {exc.strerror or exc}"
    finally:
        s.close()


def quick_run(argv: list[str], log: Log | None, timeout: float = 30) -> subprocess.CompletedProcess | None:
    """Run a read-only host command for a status answer; None when it cannot run.

    Logged with its duration when ``log`` is given (runlog's format).
    """
    import time

    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        if log is not None:
            log.command("host", " ".join(argv), time.monotonic() - start, None)
        return None
    if log is not None:
        log.command("host", " ".join(argv), time.monotonic() - start, proc.returncode)
    return proc


def refuse_file_mirrors(provider: str) -> None:
    """A ConfigError when an apt mirror is a folder of this host: a VM cannot reach it."""
    from .. import settings
    from ..hostbuild import mirror

    s = settings.current()
    mirror.refuse_for_vms(provider, VMDOCK_APT_MIRROR=s.apt_mirror, VMDOCK_APT_SECURITY_MIRROR=s.apt_security_mirror)


class Provider(ABC):
    """One Vagrant provider, as vmdock uses it.  Instances hold no state."""

    #: the Vagrant provider's name (``--provider``)
    name: ClassVar[str]
    #: what applying changed machine settings takes: a container's settings are
    #: fixed at creation ("recreate", its steps run again), a VM's are applied
    #: by ``vagrant reload`` ("reload", it keeps its disk)
    on_settings_changed: ClassVar[SettingsChange] = "reload"
    #: whether machines get their hostname set when the lab sets none (free
    #: for containers; a guest round trip on a VM under emulation)
    default_hostname: ClassVar[bool] = False
    #: whether machines boot from a Vagrant box (boxes/boxes.yaml)
    uses_boxes: ClassVar[bool] = True
    #: what to say when `vagrant up` fails and the error has no hint
    up_hint: ClassVar[str | None] = None
    #: whether ``capture``/``restore``/``lab_images`` work (lab images)
    supports_lab_images: ClassVar[bool] = False

    def __init__(self, mirror: str | None = None):
        self.mirror = mirror  # the apt mirror machine images are built from (docker)

    def transient_up_failure(self, stderr: str) -> bool:
        """Whether a failed `vagrant up` is worth one more try (a race the provider knows of)."""
        return False

    @abstractmethod
    def probe(self) -> Probe:
        """Whether the provider can work on this host, cheaply (no `vagrant` call)."""

    @abstractmethod
    def render_options(
        self, lab: LoadedLab, log: Log, events: Events, *, build: bool = True, lab_images: dict[str, str] | None = None
    ) -> dict:
        """What ``Vagrantfile.j2``'s block for this provider needs beyond the lab.

        ``build`` false (``vmdock render``): compute, never build anything.
        ``lab_images``: machine → the lab image to make it from.
        """

    def base_image(self) -> str:
        """What the machines are made from, when it can be told without building (a lab
        image's base includes it): the docker machine image's tag; '' for box-based VMs."""
        return ""

    def check_options(self, options: dict) -> None:  # noqa: B027  (most providers check nothing)
        """Refuse options the template cannot render (a ConfigError)."""

    def refuse_folder_mirrors(self) -> None:
        """A ConfigError when an apt mirror is a ``file:`` folder of this host: a virtual
        machine cannot read it (docker-provider machines get it mounted)."""
        from ..hostbuild.mirror import refuse_for_vms
        from ..settings import current

        s = current()
        refuse_for_vms(self.name, VMDOCK_APT_MIRROR=s.apt_mirror, VMDOCK_APT_SECURITY_MIRROR=s.apt_security_mirror)

    def box(self, entry: dict) -> str | None:
        """The Vagrant box for a boxes.yaml entry (None: the provider has none)."""
        from ..hostbuild import boxes

        return boxes.own_box(entry, self.name) or entry.get(self.name)

    def netmask(self, net: ipaddress.IPv4Network) -> str | int:
        """The private network's mask as the provider wants it (dotted by default)."""
        return str(net.netmask)

    @abstractmethod
    def native_status(self, inst: Instance, machines: list[str], log: Log | None = None) -> dict[str, str] | None:
        """Machine → Vagrant state name of one lab instance, asked of the provider itself (no `vagrant`).

        None when the provider cannot tell (its tool is missing or failed):
        the caller then asks Vagrant.
        """

    def prepare_network(self, seat: Seat, log: Log) -> None:  # noqa: B027  (most providers let Vagrant do it)
        """Make the instance's private network before `vagrant up`, where Vagrant cannot name it."""

    def machines(self, inst: Instance, log: Log) -> list[Machine] | None:
        """The instance's machines found on the host by their labels or names (None: cannot tell)."""
        return None

    def remove(self, machines: list[Machine], log: Log) -> None:  # noqa: B027  (nothing found: nothing to do)
        """Remove machines Vagrant does not know (``machines`` found them)."""

    def ssh_configs(self, inst: Instance, machines: list[str], log: Log) -> dict[str, SshConfig] | None:
        """Each running machine's SSH settings, asked of the provider (a `vagrant ssh-config`
        costs seconds); None: ask Vagrant."""
        return None

    def destroy(self, inst: Instance, log: Log) -> Removal | None:
        """Remove the instance's machines without Vagrant, when the provider can do it quicker;
        None: `vagrant destroy` does it.  What takes long (deleting disks) is left to
        ``Removal.finish``, which starts it in the background."""
        return None

    def cleanup(self, inst: Instance, log: Log) -> list[str]:
        """After `vagrant destroy`: remove what Vagrant leaves of THIS instance (never another's); say what."""
        return []

    def prune(self, log: Log, *, everything: bool = False) -> list[Pruned]:
        """Remove the shared images of this provider that no lab on this host uses.

        ``everything``: the current machine image too.  Says what it removed and what it kept, and why.
        """
        return []

    def lab_images(self, log: Log) -> list[LabImage]:
        """Every lab image of this provider on this host."""
        return []

    def capture(self, inst: Instance, machine: str, tag: str, labels: dict[str, str], log: Log) -> str:
        """Save a machine of a lab that is up as a lab image named ``tag``; return its id.
        The machine runs on as it was."""
        raise ProviderError(f"the {self.name} provider cannot capture lab images (not supported yet)")

    def recover_capture(self, inst: Instance, machine: str, log: Log) -> None:
        """Put back a machine whose capture was stopped half-way (the `image build` was killed);
        nothing to do for a provider whose capture leaves the machine as it was."""
        return None

    def restore(self, inst: Instance, machine: str, log: Log) -> None:
        """Check (or complete) a machine's first start from a lab image; raise when it failed."""
        raise ProviderError(f"the {self.name} provider cannot start from lab images (not supported yet)")
