"""The lab schema: what a ``labs/<name>/lab.yaml`` may say.

Strict: unknown keys, wrong types and cross-reference errors (a step aimed at
an unknown machine, a file outside the lab folder, two machines forwarding
one host port) are all errors, reported together by ``vmdock.loader``.
A lab folder is input vmdock does not control, so every list and string is
bounded and text carries no control characters.
"""
from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from . import paths

NAME_RE = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
ENV_RE = r"^[A-Z][A-Z0-9_]{0,63}$"
DEFAULT_BASE_IMAGE = "debian:bookworm"

# Each lab instance gets a /LAB_PREFIX block of the host-only network (vmdock.seats):
# 16 addresses less the network, broadcast and gateway addresses.
LAB_PREFIX = 28
MAX_MACHINES = 2 ** (32 - LAB_PREFIX) - 3

# Lengths in characters: generous for what labs hold, small enough to print.
SHORT = 200  # titles, step and check names, book sections
LINE = 2_000  # one-line values: image names, URLs, paths, headers
DESCRIPTION = 20_000
SCRIPT = 100_000  # run scripts, request bodies, env values
# Items per list.
MAX_STEPS = 500
MAX_CHECKS = 500
MAX_ITEMS = 100  # sections, images, secrets, exports, forwarded ports, contains, headers
MAX_FILES = 1_000
MAX_ENV = 500

# C0/C1 controls (bar tab, newline, carriage return), line and paragraph
# separators, bidirectional overrides and lone surrogates: they rewrite a
# terminal, reorder what a reader sees, or cannot be encoded.
_HIDDEN = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_NOT_IN_TEXT = re.compile(f"[{_HIDDEN}]")
_NOT_IN_LINE = re.compile(f"[{_HIDDEN}\t\n\r]")


def _printable(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        bad = pattern.search(value)
        if bad:
            raise ValueError(f"{what} must not contain {bad.group()!r} (character {bad.start() + 1})")
        return value

    return AfterValidator(check)


_ONE_LINE = _printable(_NOT_IN_LINE, "one line of text")
_TEXT = _printable(_NOT_IN_TEXT, "text")
ShortLine = Annotated[str, Field(max_length=SHORT), _ONE_LINE]
OneLine = Annotated[str, Field(max_length=LINE), _ONE_LINE]
Snippet = Annotated[str, Field(max_length=LINE), _TEXT]  # may span lines: expected output, a regex
Script = Annotated[str, Field(max_length=SCRIPT), _TEXT]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


Name = Annotated[str, Field(pattern=NAME_RE, description="lower-case letters, digits and '-'")]
EnvName = Annotated[str, Field(pattern=ENV_RE, description="an environment variable name")]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]


def _relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the lab folder")
    return str(p)


def _ip_address(value: str) -> str:
    """An IPv4 or IPv6 address, written the standard way (no zone: `%` is free text)."""
    try:
        if "%" in value:
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every address)") from None


def box_names() -> tuple[str, ...]:
    """The base boxes a machine may name: the keys of ``boxes/boxes.yaml``."""
    return _box_names(paths.BOXES_DIR / "boxes.yaml")


@lru_cache(maxsize=4)
def _box_names(file: Path) -> tuple[str, ...]:
    try:
        with open(file, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the list of boxes {file}: {exc}") from None
    return tuple(str(k) for k in data) if isinstance(data, dict) else ()


def _known_box(value: str) -> str:
    names = box_names()
    if value not in names:
        raise ValueError(f"unknown box {value!r} (boxes: {', '.join(names) or 'none'})")
    return value


class ForwardedPort(Strict):
    guest: Port
    host: Port
    host_ip: Annotated[str, Field(max_length=64), AfterValidator(_ip_address)] = Field(
        "127.0.0.1", description="address on the host; 127.0.0.1 unless the lab must be reachable from elsewhere"
    )
    protocol: Literal["tcp", "udp"] = "tcp"


class Machine(Strict):
    name: Name
    box: Annotated[str, Field(max_length=64), AfterValidator(_known_box)] = Field(
        "debian12", description="a base box name from boxes/boxes.yaml"
    )
    cpus: int = Field(1, ge=1, le=64)
    memory: int = Field(1024, ge=256, le=262144, description="MiB")
    hostname: Name | None = Field(None, description="defaults to <lab>-<machine>")
    forwarded_ports: list[ForwardedPort] = Field([], max_length=MAX_ITEMS)
    synced_folder: bool = Field(False, description="share the lab folder at /vagrant (off by default)")


class Step(Strict):
    name: ShortLine = Field(
        ..., min_length=1, description="shown in progress and `vmdock steps`, e.g. '6.1.2 构建和上传镜像'"
    )
    name_en: ShortLine | None = None
    on: list[Name] | Literal["all"] = Field(
        "all", max_length=MAX_MACHINES, description="machines this step runs on, in order"
    )
    run: Script = Field(
        ..., min_length=1, description="a bash script, run as root in the lab folder inside the machine"
    )
    files: list[OneLine] = Field(
        [], max_length=MAX_FILES, description="lab files this step reads: a change to them re-runs the step"
    )
    timeout: int = Field(1800, ge=1, le=86400, description="seconds")
    exports: list[EnvName] = Field(
        [],
        max_length=MAX_ITEMS,
        description="values this step writes as KEY=value lines to $VMDOCK_EXPORTS; "
        "later steps and checks get them as env vars",
    )

    _files = field_validator("files")(lambda cls, v: [_relative_path(x) for x in v])

    @field_validator("on", mode="before")
    @classmethod
    def _one_machine(cls, v):
        return [v] if isinstance(v, str) and v != "all" else v


class _Check(Strict):
    name: ShortLine = Field(..., min_length=1)
    on: Name | None = Field(None, description="machine to check from; the lab's first machine by default")
    timeout: int = Field(60, ge=1, le=3600)
    retries: int = Field(0, ge=0, le=100, description="extra attempts, 2 s apart, for things that take a moment")


class CommandCheck(_Check):
    type: Literal["command"]
    run: Script = Field(..., min_length=1)
    exit_code: int = 0
    contains: list[Snippet] = Field([], max_length=MAX_ITEMS)
    matches: Snippet | None = Field(None, description="a Python regular expression searched in stdout")

    @field_validator("contains", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("matches")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class HttpCheck(_Check):
    type: Literal["http"]
    url: OneLine = Field(
        ...,
        pattern=r"^https?://",
        description="${NAME} is replaced by the lab's env, secrets and exports (e.g. ${VMDOCK_IP_WEB})",
    )
    cacert: OneLine | None = Field(
        None, description="CA certificate to trust, a path in the machine (relative to the lab folder)"
    )
    status: int = Field(200, ge=100, le=599)
    contains: list[Snippet] = Field([], max_length=MAX_ITEMS)
    method: Literal["GET", "POST", "PUT", "DELETE", "HEAD"] = "GET"
    body: Script | None = None
    headers: dict[OneLine, OneLine] = Field({}, max_length=MAX_ITEMS)

    _one = field_validator("contains", mode="before")(lambda cls, v: [v] if isinstance(v, str) else v)


class PortCheck(_Check):
    type: Literal["port"]
    port: Port
    host: OneLine = "127.0.0.1"
    open: bool = True


class ContainerCheck(_Check):
    type: Literal["container"]
    container: OneLine = Field(..., min_length=1)
    running: bool = True


Check = Annotated[
    CommandCheck | HttpCheck | PortCheck | ContainerCheck, Field(discriminator="type")
]


class Needs(Strict):
    """What a lab needs from outside; an offline lab needs nothing."""

    images: list[OneLine] = Field(
        [], max_length=MAX_ITEMS, description="images pulled from a registry (or loaded from --images-dir)"
    )


class Lab(Strict):
    name: Name
    chapter: int | None = Field(None, ge=1, le=99, description="the book's chapter; a lab outside the book has none")
    title: ShortLine = Field(..., min_length=1, description="as the book has it")
    title_en: ShortLine | None = None
    description: Annotated[str, Field(max_length=DESCRIPTION), _TEXT] = ""
    sections: list[ShortLine] = Field([], max_length=MAX_ITEMS)
    offline: bool = Field(True, description="comes up and verifies with no Docker Hub")
    base_image: OneLine = Field(DEFAULT_BASE_IMAGE, description="image the lab's Dockerfiles build FROM")
    needs: Needs = Needs()
    secrets: list[EnvName] = Field(
        [], max_length=MAX_ITEMS, description="generated per lab instance, passed to steps and checks as env vars"
    )
    env: dict[EnvName, Script] = Field({}, max_length=MAX_ENV, description="environment for every step and check")

    @field_validator("env", mode="before")
    @classmethod
    def _scalars_as_strings(cls, v):
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x)) if isinstance(x, (int, float, bool)) else x
                    for k, x in v.items()}
        return v
    machines: list[Machine] = Field(
        ..., min_length=1, max_length=MAX_MACHINES, description=f"at most {MAX_MACHINES}: the size of a lab's network"
    )
    steps: list[Step] = Field([], max_length=MAX_STEPS)
    checks: list[Check] = Field([], max_length=MAX_CHECKS)

    @model_validator(mode="after")
    def _cross_refs(self):
        errors = cross_ref_errors(self.model_dump())
        if errors:
            raise ValueError("\n".join(errors))
        return self

    # -- conveniences -------------------------------------------------
    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(name)

    def targets(self, step: Step) -> list[str]:
        return [m.name for m in self.machines] if step.on == "all" else list(step.on)

    def check_machine(self, check) -> str:
        return check.on or self.machines[0].name


def cross_ref_errors(data: dict) -> list[str]:
    """Machine names, the machines steps and checks aim at, secrets vs env.

    Works on validated data and, defensively, on raw YAML (so these errors are
    reported even when other fields of the file are invalid).
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        return errors
    machines = _items(data, "machines")
    names = [m["name"] for m in machines if isinstance(m, dict) and isinstance(m.get("name"), str)]
    seen: set[str] = set()
    for i, m in enumerate(machines):
        n = m.get("name") if isinstance(m, dict) else None
        if isinstance(n, str):
            if n in seen:
                errors.append(f"machines[{i}].name: duplicate machine name {n!r}")
            seen.add(n)
    shown = [n for n in names if re.match(NAME_RE, n)]
    known = ", ".join(shown[:MAX_MACHINES]) + (", …" if len(shown) > MAX_MACHINES else "") or "none"
    for i, step in enumerate(_items(data, "steps")):
        on = step.get("on", "all") if isinstance(step, dict) else "all"
        if isinstance(on, str) and on != "all":
            on = [on]
        if isinstance(on, list):
            for j, target in enumerate(on):
                if isinstance(target, str) and target not in seen:
                    errors.append(f"steps[{i}].on[{j}]: unknown machine {target!r} (machines: {known})")
    for i, check in enumerate(_items(data, "checks")):
        on = check.get("on") if isinstance(check, dict) else None
        if isinstance(on, str) and on not in seen:
            errors.append(f"checks[{i}].on: unknown machine {on!r} (machines: {known})")
    env = data.get("env")
    secrets = {s for s in _items(data, "secrets") if isinstance(s, str)}
    clash = sorted(str(x) for x in secrets & set(env if isinstance(env, dict) else {}))
    if clash:
        errors.append(f"secrets: {clash} also set in env")
    return errors + _forwarding_errors(machines)


def _items(data: dict, key: str) -> list:
    """``data[key]`` when it is a list (raw YAML may hold anything there)."""
    value = data.get(key)
    return value if isinstance(value, list) else []


def _forwarding_errors(machines: list) -> list[str]:
    """A host port (per address and protocol) is forwarded once in a lab, a guest port once per machine.

    The unspecified address (0.0.0.0, ::) takes the port on every address.
    Vagrant keys a machine's forwards by guest port and protocol, so a second
    forward of one guest port would silently replace the first.
    """
    errors: list[str] = []
    taken: dict[tuple[int, str], dict[str, str]] = {}  # (host port, protocol) → {address: where}
    for i, m in enumerate(machines):
        guests: dict[tuple[int, str], str] = {}
        for j, fwd in enumerate(_items(m, "forwarded_ports") if isinstance(m, dict) else []):
            if not isinstance(fwd, dict):
                continue
            where = f"machines[{i}].forwarded_ports[{j}]"
            named = isinstance(m.get("name"), str) and re.match(NAME_RE, m["name"])
            label = where + (f" ({m['name']})" if named else "")
            protocol, guest, host = fwd.get("protocol", "tcp"), fwd.get("guest"), fwd.get("host")
            if not isinstance(protocol, str):
                continue
            if isinstance(guest, int) and _is_port(guest):
                if (guest, protocol) in guests:
                    first = guests[guest, protocol]
                    errors.append(f"{where}.guest: guest port {guest}/{protocol} is already forwarded by {first}")
                guests.setdefault((guest, protocol), label)
            address = _address_or_none(fwd.get("host_ip", "127.0.0.1"))
            if not (isinstance(host, int) and _is_port(host)) or address is None:
                continue
            users = taken.setdefault((host, protocol), {})
            other = users.get(address) or users.get("*")
            if address == "*" and users and not other:
                other = next(iter(users.values()))
            if other:
                errors.append(f"{where}.host: host port {host}/{protocol} is already forwarded by {other}")
            users.setdefault(address, label)
    return errors


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _address_or_none(value) -> str | None:
    """The address a forward listens on, ``*`` for every address; None when invalid."""
    try:
        address = ipaddress.ip_address(value) if isinstance(value, str) and "%" not in value else None
    except ValueError:
        return None
    if address is None:
        return None
    return "*" if address.is_unspecified else str(address)
