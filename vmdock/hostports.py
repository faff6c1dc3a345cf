"""Forwarded host ports of a seat: the book's ports moved by the seat's offset, whether each
is free on this host, who holds a taken one (a vmdock instance, or any container), and an
offset that frees them all.  Tried before ``vagrant up`` (``vmdock.preflight``), so that a
taken port is named with its holder and nothing is changed.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .errors import LabError, StateError


@dataclass(frozen=True)
class HostPort:
    machine: str
    guest: int
    host: int  # the book's port plus the seat's offset
    host_ip: str
    protocol: str

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host}/{self.protocol} (→ {self.machine}:{self.guest})"


def effective_ports(machines, offset: int, where: str = "lab") -> list[HostPort]:
    """The forwarded ports of ``machines`` (lab model machines) moved by ``offset``, as a block."""
    out = []
    for i, m in enumerate(machines):
        for j, p in enumerate(m.forwarded_ports):
            host = p.host + offset
            if not 0 < host < 65536:
                raise LabError(
                    f"{where}: machines[{i}].forwarded_ports[{j}].host: {p.host} + port offset {offset} = {host} "
                    "is not a port (1-65535)"
                )
            out.append(HostPort(m.name, p.guest, host, p.host_ip, p.protocol))
    return out


def port_free(host_ip: str, port: int, protocol: str = "tcp") -> tuple[bool, str]:
    """Whether this process could bind (host_ip, port) now: (free, why not)."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT socket is no holder
        try:
            s.bind((host_ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False, "in use"
            if exc.errno == errno.EADDRNOTAVAIL:
                return False, f"{host_ip} is not an address of this host"
            return False, exc.strerror or str(exc)
    return True, ""


@dataclass(frozen=True)
class PortHolder:
    """Who holds a host port, as far as docker's labels tell."""

    instance: str  # "" for a container that is not a vmdock instance's
    lab: str
    home: str
    name: str  # container name

    def describe(self) -> str:
        if self.lab and self.instance:
            return f"vmdock lab {self.lab} of {self.home} (instance {self.instance}, container {self.name})"
        if self.lab:
            return f"vmdock lab {self.lab} (container {self.name}, made by a vmdock without instance ids)"
        return f"docker container {self.name}"


def parse_docker_ports(text: str) -> list[tuple[str, int, str]]:
    """`docker ps` Ports column → [(host_ip, host_port, protocol)] of the published ones."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if "->" not in part:
            continue
        host, _, guest = part.partition("->")
        ip, _, ports = host.rpartition(":")
        proto = guest.rpartition("/")[2] or "tcp"
        first, _, last = ports.partition("-")
        if not first.isdigit():
            continue
        for port in range(int(first), int(last or first) + 1):
            out.append((ip.strip("[]") or "0.0.0.0", port, proto))
    return out


def _same_address(a: str, b: str) -> bool:
    wildcard = ("0.0.0.0", "::", "")
    return a == b or a in wildcard or b in wildcard


@dataclass(frozen=True)
class TakenPort:
    port: HostPort
    why: str
    holder: PortHolder | None

    def describe(self) -> str:
        who = self.holder.describe() if self.holder else "a process on this host"
        return f"{self.port.machine}: host port {self.port.host_ip}:{self.port.host} is {self.why}, held by {who}"


def taken_ports(
    ports: list[HostPort],
    holders: dict[tuple[str, int, str], PortHolder],
    own_instance: str,
    is_free: Callable[[str, int, str], tuple[bool, str]] = port_free,
) -> list[TakenPort]:
    """The ports of ``ports`` that cannot be bound, with their holder; the instance's own are not taken."""
    out = []
    for p in ports:
        holder = next(
            (h for (ip, port, proto), h in holders.items()
             if port == p.host and proto == p.protocol and _same_address(ip, p.host_ip)),
            None,
        )
        if holder is not None and holder.instance == own_instance:
            continue
        free, why = is_free(p.host_ip, p.host, p.protocol)
        if not free:
            out.append(TakenPort(p, why, holder))
    return out


def suggest_offset(
    ports: list[HostPort],
    current: int,
    is_free: Callable[[str, int, str], tuple[bool, str]] = port_free,
    step: int = 100,
    tries: int = 20,
) -> int | None:
    """The first offset (current + k·step) at which every port is free."""
    for k in range(1, tries + 1):
        offset = current + k * step
        moved = [p.host - current + offset for p in ports]
        if all(0 < h < 65536 for h in moved) and all(
            is_free(p.host_ip, h, p.protocol)[0] for p, h in zip(ports, moved, strict=True)
        ):
            return offset
    return None


class PortsTaken(StateError):
    """Forwarded host ports are taken: `up` refused before changing anything (the lab stays as it was)."""


def ports_taken_error(lab: str, taken: list[TakenPort], offset: int, suggestion: int | None) -> PortsTaken:
    lines = [t.describe() for t in taken]
    hint = "stop what holds the port, or move this seat's ports as a block with --port-offset N (VMDOCK_PORT_OFFSET)"
    if suggestion is not None:
        hint += f": --port-offset {suggestion} frees them all"
    return PortsTaken(
        f"{len(taken)} forwarded host port(s) taken (port offset {offset}): " + "; ".join(lines),
        lab=lab,
        hint=hint,
    )
