"""What the host already has: networks, published ports, vmdock's machines of every home.

Each probe asks one tool (docker, virsh, ip) and is logged like every other
command; a tool that is missing or a daemon that is down counts as having
nothing to say, since a provider that cannot run holds no network.
"""
from __future__ import annotations

import ipaddress
import json
import re
import shutil
from pathlib import Path

from .errors import CommandError
from .hostports import HostPort, PortHolder, parse_docker_ports, ports_taken_error, suggest_offset, taken_ports
from .runlog import Log, run
from .seats import ID_LENGTH, Instance, Lease, Machine, allocate_subnet, host_dir, host_lock, read_leases

Net = tuple[ipaddress.IPv4Network, str]
LIBVIRT_URI = "qemu:///system"
_LABELS = ("vmdock.instance", "vmdock.lab", "vmdock.home", "vmdock.machine")


def _out(cmd: list[str], log: Log) -> str | None:
    """stdout of a probe, or None when its tool cannot answer."""
    if not shutil.which(cmd[0]):
        return None
    try:
        proc = run(cmd, log, check=False, timeout=30)
    except CommandError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def _net(text: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None


def docker_networks(log: Log) -> list[Net]:
    ids = (_out(["docker", "network", "ls", "-q"], log) or "").split()
    if not ids:
        return []
    fmt = "{{.Name}}{{range .IPAM.Config}} {{.Subnet}}{{end}}"
    out = []
    for line in (_out(["docker", "network", "inspect", "-f", fmt, *ids], log) or "").splitlines():
        name, *subnets = line.split()
        out += [(net, f"docker network {name}") for net in map(_net, subnets) if net]
    return out


def libvirt_networks(log: Log) -> list[Net]:
    names = (_out(["virsh", "-c", LIBVIRT_URI, "net-list", "--all", "--name"], log) or "").split()
    out = []
    for name in names:
        xml = _out(["virsh", "-c", LIBVIRT_URI, "net-dumpxml", name], log) or ""
        for m in re.finditer(r"<ip\b([^>]*)>", xml):
            attrs = dict(re.findall(r"(\w+)=['\"]([^'\"]*)['\"]", m.group(1)))
            if "address" not in attrs:
                continue
            mask = attrs.get("prefix") or attrs.get("netmask") or "24"
            net = _net(f"{attrs['address']}/{mask}")
            if net:
                out.append((net, f"libvirt network {name}"))
    return out


def interface_networks(log: Log) -> list[Net]:
    out = []
    for link in json.loads(_out(["ip", "-j", "addr"], log) or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                net = _net(f"{a['local']}/{a['prefixlen']}")
                if net and not net.is_loopback:
                    out.append((net, f"interface {link.get('ifname')}"))
    for route in json.loads(_out(["ip", "-j", "route"], log) or "[]"):
        dst = route.get("dst", "")
        net = _net(dst if "/" in dst else f"{dst}/32") if dst != "default" else None
        if net:
            out.append((net, f"route via {route.get('dev') or route.get('gateway')}"))
    return out


def host_networks(log: Log) -> list[Net]:
    """Every IPv4 network the host has: docker's, libvirt's, its interfaces' and routes."""
    return docker_networks(log) + libvirt_networks(log) + interface_networks(log)


# -- vmdock's machines and their ports --------------------------------------------------

_PS_FORMAT = "\t".join(
    ["{{.ID}}", "{{.Names}}", "{{.State}}", "{{.Ports}}"] + [f'{{{{.Label "{k}"}}}}' for k in _LABELS]
)


def _docker_ps(log: Log, *filters: str) -> list[list[str]]:
    args = ["docker", "ps", "-a", "--no-trunc", "--format", _PS_FORMAT]
    for f in filters:
        args += ["--filter", f]
    return [line.split("\t") for line in (_out(args, log) or "").splitlines() if line.count("\t") == 7]


def docker_port_holders(log: Log) -> dict[tuple[str, int, str], PortHolder]:
    """(host_ip, port, protocol) → the container that publishes it (every container, vmdock's or not)."""
    holders = {}
    for _cid, name, state, ports, instance, lab, home, _machine in _docker_ps(log):
        if state != "running":
            continue
        for key in parse_docker_ports(ports):
            holders[key] = PortHolder(instance, lab, home, name)
    return holders


def docker_machines(log: Log, instance: str | None = None) -> list[Machine]:
    """vmdock's containers on the host (label vmdock.lab), or one instance's."""
    flt = f"label=vmdock.instance={instance}" if instance else "label=vmdock.lab"
    return [
        Machine("docker", cid, name, inst, lab, home, machine, state)
        for cid, name, state, _ports, inst, lab, home, machine in _docker_ps(log, flt)
    ]


def libvirt_machines(log: Log, leases: list[Lease]) -> list[Machine]:
    """vmdock's libvirt domains (named vmdock-<id>-<lab>-<machine>); the lab comes from the leases."""
    text = _out(["virsh", "-c", LIBVIRT_URI, "list", "--all", "--uuid", "--name"], log) or ""
    by_id = {lease.instance: lease for lease in leases}
    states = _libvirt_states(log)
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or not re.match(rf"vmdock-[0-9a-f]{{{ID_LENGTH}}}-", parts[1]):
            continue
        uuid, name = parts
        inst = name[len("vmdock-"): len("vmdock-") + ID_LENGTH]
        lease = by_id.get(inst)
        lab, home, machine = "?", "?", name[len("vmdock-") + ID_LENGTH + 1:]
        if lease and machine.startswith(lease.lab + "-"):
            lab, home, machine = lease.lab, lease.home, machine[len(lease.lab) + 1:]
        out.append(Machine("libvirt", uuid, name, inst, lab, home, machine, states.get(name, "unknown")))
    return out


def _libvirt_states(log: Log) -> dict[str, str]:
    text = _out(["virsh", "-c", LIBVIRT_URI, "list", "--all"], log) or ""
    states = {}
    for line in text.splitlines()[2:]:
        parts = line.split(None, 2)
        if len(parts) == 3:
            states[parts[1]] = parts[2].strip()
    return states


def instances(log: Log) -> list[dict]:
    """Every vmdock instance on the host, like `vagrant global-status`.

    From docker labels, libvirt domain names and the host-wide leases; each
    home's state file adds the phase where it can be read.
    """
    folder = host_dir() / "subnets"
    leases = read_leases(folder) if folder.is_dir() else []
    rows: dict[str, dict] = {}

    def row(inst: str, lab: str, home: str) -> dict:
        key = inst or f"{home}|{lab}"
        return rows.setdefault(key, {"instance": inst or None, "lab": lab, "home": home or None,
                                     "network": None, "machines": {}, "phase": None})

    for lease in leases:
        row(lease.instance, lease.lab, lease.home)["network"] = str(lease.subnet)
    machines = docker_machines(log) + (libvirt_machines(log, leases) if shutil.which("virsh") else [])
    for m in machines:
        row(m.instance, m.lab, m.home)["machines"][m.machine or m.name] = f"{m.state} ({m.provider} {m.name})"
    for r in rows.values():
        r["phase"] = _phase(r["home"], r["lab"])
    return sorted(rows.values(), key=lambda r: (r["lab"] or "", r["home"] or ""))


def _phase(home: str | None, lab: str) -> str | None:
    if not home or home == "?":
        return None
    try:
        data = json.loads((Path(home) / "labs" / lab / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("phase") if isinstance(data, dict) else None


# -- what `vmdock up` asks before `vagrant up` --------------------------------------------


def claim_network(inst: Instance, log: Log, preferred: ipaddress.IPv4Network | None = None) -> ipaddress.IPv4Network:
    """The instance's private network: its lease, or a free block (``preferred`` first) leased
    now under the host lock."""
    with host_lock(f"choosing a network for {inst.lab}"):
        return allocate_subnet(inst, lambda: host_networks(log), preferred=preferred)


def check_ports(inst: Instance, ports: list[HostPort], offset: int, log: Log) -> None:
    """Raise naming every forwarded host port that is taken, its holder, and an offset that frees them."""
    if not ports:
        return
    taken = taken_ports(ports, docker_port_holders(log), inst.id)
    if taken:
        raise ports_taken_error(inst.lab, taken, offset, suggest_offset(ports, offset))
