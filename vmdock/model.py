"""The lab schema: what a ``labs/<name>/lab.yaml`` may say.

Strict: unknown keys, wrong types and cross-reference errors (a step aimed at
an unknown machine, a file outside the lab folder) are all errors, reported
together by ``vmdock.loader``.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
ENV_RE = r"^[A-Z][A-Z0-9_]{0,63}$"
DEFAULT_BASE_IMAGE = "debian:bookworm"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


Name = Annotated[str, Field(pattern=NAME_RE, description="lower-case letters, digits and '-'")]
EnvName = Annotated[str, Field(pattern=ENV_RE, description="an environment variable name")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the lab folder")
    return str(p)


class ForwardedPort(Strict):
    guest: Port
    host: Port
    host_ip: str = Field(
        "127.0.0.1", description="address on the host; 127.0.0.1 unless the lab must be reachable from elsewhere"
    )
    protocol: Literal["tcp", "udp"] = "tcp"


class Machine(Strict):
    name: Name
    box: str = Field("debian12", description="a base box name from boxes/boxes.yaml")
    cpus: int = Field(1, ge=1, le=64)
    memory: int = Field(1024, ge=256, le=262144, description="MiB")
    hostname: Name | None = Field(None, description="defaults to <lab>-<machine>")
    forwarded_ports: list[ForwardedPort] = []
    synced_folder: bool = Field(False, description="share the lab folder at /vagrant (off by default)")


class Step(Strict):
    name: str = Field(..., min_length=1, description="shown in progress and `vmdock steps`, e.g. '6.1.2 构建和上传镜像'")
    name_en: str | None = None
    on: list[Name] | Literal["all"] = Field("all", description="machines this step runs on, in order")
    run: str = Field(..., min_length=1, description="a bash script, run as root in the lab folder inside the machine")
    files: list[str] = Field([], description="lab files this step reads: a change to them re-runs the step")
    timeout: int = Field(1800, ge=1, le=86400, description="seconds")
    exports: list[EnvName] = Field(
        [],
        description="values this step writes as KEY=value lines to $VMDOCK_EXPORTS; later steps and checks get them as env vars",
    )

    _files = field_validator("files")(lambda cls, v: [_relative_path(x) for x in v])

    @field_validator("on", mode="before")
    @classmethod
    def _one_machine(cls, v):
        return [v] if isinstance(v, str) and v != "all" else v


class _Check(Strict):
    name: str = Field(..., min_length=1)
    on: Name | None = Field(None, description="machine to check from; the lab's first machine by default")
    timeout: int = Field(60, ge=1, le=3600)
    retries: int = Field(0, ge=0, le=100, description="extra attempts, 2 s apart, for things that take a moment")


class CommandCheck(_Check):
    type: Literal["command"]
    run: str = Field(..., min_length=1)
    exit_code: int = 0
    contains: list[str] = []
    matches: str | None = Field(None, description="a Python regular expression searched in stdout")

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
    url: str = Field(
        ..., pattern=r"^https?://", description="${NAME} is replaced by the lab's env, secrets and exports (e.g. ${VMDOCK_IP_WEB})"
    )
    cacert: str | None = Field(None, description="CA certificate to trust, a path in the machine (relative to the lab folder)")
    status: int = Field(200, ge=100, le=599)
    contains: list[str] = []
    method: Literal["GET", "POST", "PUT", "DELETE", "HEAD"] = "GET"
    body: str | None = None
    headers: dict[str, str] = {}

    _one = field_validator("contains", mode="before")(lambda cls, v: [v] if isinstance(v, str) else v)


class PortCheck(_Check):
    type: Literal["port"]
    port: Port
    host: str = "127.0.0.1"
    open: bool = True


class ContainerCheck(_Check):
    type: Literal["container"]
    container: str = Field(..., min_length=1)
    running: bool = True


Check = Annotated[
    Union[CommandCheck, HttpCheck, PortCheck, ContainerCheck], Field(discriminator="type")
]


class Needs(Strict):
    """What a lab needs from outside; an offline lab needs nothing."""

    images: list[str] = Field([], description="images pulled from a registry (or loaded from --images-dir)")


class Lab(Strict):
    name: Name
    chapter: int | None = Field(None, ge=1, le=99, description="the book's chapter; a lab outside the book has none")
    title: str = Field(..., min_length=1, description="as the book has it")
    title_en: str | None = None
    description: str = ""
    sections: list[str] = []
    offline: bool = Field(True, description="comes up and verifies with no Docker Hub")
    base_image: str = Field(DEFAULT_BASE_IMAGE, description="image the lab's Dockerfiles build FROM")
    needs: Needs = Needs()
    secrets: list[EnvName] = Field([], description="generated per lab instance, passed to steps and checks as env vars")
    env: dict[EnvName, str] = Field({}, description="environment for every step and check")

    @field_validator("env", mode="before")
    @classmethod
    def _scalars_as_strings(cls, v):
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x)) if isinstance(x, (int, float, bool)) else x
                    for k, x in v.items()}
        return v
    machines: list[Machine] = Field(..., min_length=1)
    steps: list[Step] = []
    checks: list[Check] = []

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
    machines = data.get("machines") if isinstance(data.get("machines"), list) else []
    names = [m.get("name") for m in machines if isinstance(m, dict) and isinstance(m.get("name"), str)]
    seen: set[str] = set()
    for i, m in enumerate(machines):
        n = m.get("name") if isinstance(m, dict) else None
        if isinstance(n, str):
            if n in seen:
                errors.append(f"machines[{i}].name: duplicate machine name {n!r}")
            seen.add(n)
    known = ", ".join(names) or "none"
    for i, step in enumerate(data.get("steps") if isinstance(data.get("steps"), list) else []):
        on = step.get("on", "all") if isinstance(step, dict) else "all"
        if isinstance(on, str) and on != "all":
            on = [on]
        if isinstance(on, list):
            for j, target in enumerate(on):
                if isinstance(target, str) and target not in seen:
                    errors.append(f"steps[{i}].on[{j}]: unknown machine {target!r} (machines: {known})")
    for i, check in enumerate(data.get("checks") if isinstance(data.get("checks"), list) else []):
        on = check.get("on") if isinstance(check, dict) else None
        if isinstance(on, str) and on not in seen:
            errors.append(f"checks[{i}].on: unknown machine {on!r} (machines: {known})")
    secrets = data.get("secrets") if isinstance(data.get("secrets"), list) else []
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    clash = sorted(str(x) for x in set(s for s in secrets if isinstance(s, str)) & set(env))
    if clash:
        errors.append(f"secrets: {clash} also set in env")
    return errors
