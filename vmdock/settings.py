"""User settings: environment variables and CLI options, validated once."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import ConfigError
from .seats import parse_port_offset

_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").replace(";", ",").split(",") if v.strip()]


@dataclass(frozen=True)
class Settings:
    provider: str | None = None
    apt_mirror: str | None = None
    apt_security_mirror: str | None = None
    docker_source: str = "debian"
    docker_ce_mirror: str | None = None
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    pull_base: bool = False
    images_dir: str | None = None
    port_offset: int | None = None  # None: the seat's recorded offset (0 at first)
    connect_timeout: int = 15
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        values = dict(
            provider=env.get("VMDOCK_PROVIDER") or None,
            apt_mirror=env.get("VMDOCK_APT_MIRROR") or None,
            apt_security_mirror=env.get("VMDOCK_APT_SECURITY_MIRROR") or None,
            docker_source=env.get("VMDOCK_DOCKER_SOURCE") or "debian",
            docker_ce_mirror=env.get("VMDOCK_DOCKER_CE_MIRROR") or None,
            registry_mirrors=tuple(_list(env.get("VMDOCK_REGISTRY_MIRRORS"))),
            insecure_registries=tuple(_list(env.get("VMDOCK_INSECURE_REGISTRIES"))),
            pull_base=env.get("VMDOCK_PULL_BASE", "") in ("1", "true", "yes"),
            images_dir=env.get("VMDOCK_IMAGES_DIR") or None,
            port_offset=parse_port_offset(env.get("VMDOCK_PORT_OFFSET"), "VMDOCK_PORT_OFFSET"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        s.validate()
        return s

    def validate(self) -> None:
        for name, url in (("VMDOCK_APT_MIRROR", self.apt_mirror), ("VMDOCK_APT_SECURITY_MIRROR", self.apt_security_mirror)):
            if url and not _URL.match(url):
                raise ConfigError(f"{name}: {url!r} is not an http(s) URL")
        if self.docker_source not in ("debian", "docker-ce"):
            raise ConfigError(f"VMDOCK_DOCKER_SOURCE: {self.docker_source!r} must be 'debian' or 'docker-ce'")
        for url in self.registry_mirrors:
            if not _URL.match(url):
                raise ConfigError(f"VMDOCK_REGISTRY_MIRRORS: {url!r} is not an http(s) URL")
        for reg in self.insecure_registries:
            if not _HOSTPORT.match(reg):
                raise ConfigError(f"VMDOCK_INSECURE_REGISTRIES: {reg!r} is not host[:port]")
        from .providers import NAMES

        if self.provider is not None and self.provider not in NAMES:
            raise ConfigError(
                f"provider {self.provider!r} is not one of {', '.join(NAMES)}",
                hint="set --provider or VMDOCK_PROVIDER",
            )
