"""User settings: every ``VMDOCK_*`` variable, and the CLI options that
override some of them, in one model validated once.

``Settings.from_env(**options)`` reads the environment (empty variables
count as unset), applies the options that were given and validates
everything; a bad value is a ConfigError naming the variable (or option)::

    VMDOCK_APT_MIRROR: 'ftp://x' is not an http(s) or file URL

``current()`` is the same object for code that has no settings passed in
(paths, loader, render): read again only when a ``VMDOCK_*`` variable
changed.  ``rows()`` says where each value came from (``vmdock config``),
``markdown_table()`` is the README's table of variables.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import ConfigError

PREFIX = "VMDOCK_"
#: Settings read from a family of variables: field → variable prefix.
FAMILIES = {"box_urls": "VMDOCK_BOX_URL_", "secrets": "VMDOCK_SECRET_"}
#: Settings a CLI option can give: field → option.
OPTIONS = {"provider": "--provider", "images_dir": "--images-dir", "labs": "--labs-dir", "port_offset": "--port-offset"}

_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")


def check_url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``value`` stripped (and without a trailing slash) when it is a URL of ``schemes``.

    A ``file:`` URL must name an existing folder of this host.
    """
    value = value.strip()
    names = " or ".join(["http(s)" if s == "http" else s for s in schemes if s != "https"])
    parsed = urlparse(value)
    if parsed.scheme not in schemes or re.search(r"[\s'\"]", value) or (parsed.scheme != "file" and not parsed.netloc):
        raise ValueError(f"{value!r} is not an {names} URL")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError(f"{value!r} is not a file URL of this host (file:///path/to/folder)")
        if not Path(unquote(parsed.path)).is_dir():
            raise ValueError(f"{value!r}: {unquote(parsed.path)} is not a folder on this host")
    return value.rstrip("/")


def file_url_path(url: str | None) -> Path | None:
    """The host folder of a ``file:`` URL (None for other URLs)."""
    if url and urlparse(url).scheme == "file":
        return Path(unquote(urlparse(url).path))
    return None


def _split(value: Any, separators: str) -> Any:
    if isinstance(value, str):
        return tuple(v.strip() for v in re.split(f"[{separators}]", value) if v.strip())
    return value


def _environment() -> dict[str, Any]:
    """The values the environment gives: ``VMDOCK_<SETTING>`` (any case; empty counts as unset), as text,
    and the variable families (``VMDOCK_BOX_URL_<BOX>``) as mappings."""
    env = {k.lower(): v for k, v in os.environ.items()}
    data: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = env.get((PREFIX + name).lower())
        if name not in FAMILIES and value:
            data[name] = value
    for name, prefix in FAMILIES.items():
        found = {k[len(prefix):]: v for k, v in os.environ.items() if k.startswith(prefix) and k != prefix and v}
        if found:
            data[name] = found
    return data


class Settings(BaseModel):
    """What vmdock reads from ``VMDOCK_*`` variables (see the README's table).

    ``Settings(**values)`` is the environment with ``values`` on top.  A plain
    pydantic model: pydantic-settings would double what `vmdock list` spends importing.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    provider: str | None = Field(
        None, description="the Vagrant provider: virtualbox, libvirt or docker (default: the first usable of these)")
    labs: tuple[Path, ...] = Field(
        (), description="more folders of lab folders, separated by `:` (`;` on Windows), searched before the "
        "shipped labs (`--labs-dir` folders come first)")
    home: Path | None = Field(
        None, description="vmdock's own folder: per-lab Vagrantfiles, state and logs "
        "(default: `$XDG_DATA_HOME/vmdock`, else `~/.local/share/vmdock`)")
    cache: Path | None = Field(
        None, description="builds worth keeping (the Debian rootfs, boxes, host facts), e.g. shared by several "
        "homes (default: `$VMDOCK_HOME/cache`)")
    apt_mirror: str | None = Field(
        None, description="Debian mirror for the machines and for what vmdock builds offline (rootfs, machine "
        "image, box): http(s)://, or file:// a folder of this host (docker provider and host builds only), e.g. "
        "`https://mirrors.tuna.tsinghua.edu.cn/debian` (default: deb.debian.org; machines keep their sources)")
    apt_security_mirror: str | None = Field(
        None, description="the same for the security suite (default: the machines' own)")
    docker_source: str = Field("debian", description="where machines get Docker: debian (docker.io) or docker-ce")
    docker_ce_mirror: str | None = Field(
        None, description="get.docker.com's `--mirror` (e.g. `Aliyun`, `AzureChinaCloud`), "
        "with VMDOCK_DOCKER_SOURCE=docker-ce")
    get_docker_url: str | None = Field(
        None, description="a copy of get.docker.com (http(s):// or file:// inside the machine), "
        "with VMDOCK_DOCKER_SOURCE=docker-ce (default: https://get.docker.com)")
    registry_mirrors: tuple[str, ...] = Field(
        (), description="registry mirrors (http(s)://) for the machines' daemon.json, separated by `,`")
    insecure_registries: tuple[str, ...] = Field(
        (), description="insecure registries (host[:port]) for the machines' daemon.json, separated by `,`")
    pull_base: bool = Field(False, description="`1`: machines try `docker pull` of the labs' base image before "
                            "building it from vmdock's rootfs")
    images_dir: str | None = Field(
        None, description="folder of `docker save` tarballs for labs that need images")
    registry_probe: str | None = Field(
        None, description="URL probed to tell whether a registry is reachable "
        "(default: https://registry-1.docker.io/v2/)")
    libvirt_driver: str | None = Field(
        None, description="the libvirt domain type (vagrant-libvirt's `driver`): kvm or qemu "
        "(default: kvm when a test guest boots fast under KVM)")
    port_offset: int | None = Field(
        None, gt=-65535, lt=65535, description="move this seat's forwarded host ports by N, as a block: the "
        "student's port is the lab's plus N (default: the offset the lab's state recorded, 0 at first)")
    host_dir: Path | None = Field(
        None, description="the folder every user's vmdock on this host shares: the labs' network leases and "
        "their lock (default: `/var/tmp/vmdock`; made mode 1777, like /tmp)")
    connect_timeout: int = Field(15, gt=0, description="seconds to wait for a machine's SSH connection")
    box_urls: dict[str, str] = Field(
        default_factory=dict, description="a mirror URL or local `.box` file for box `<BOX>` of `boxes/boxes.yaml` "
        "(e.g. `VMDOCK_BOX_URL_DEBIAN12`)")
    secrets: dict[str, str] = Field(
        default_factory=dict, description="the value of lab secret `<NAME>` "
        "(default: a random one kept in the lab's state)")

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_environment(), **values})

    # -- validation ------------------------------------------------------------

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        from .providers import NAMES  # the one registry of providers

        if v is not None and v not in NAMES:
            raise ValueError(f"{v!r} is not one of {', '.join(NAMES)}")
        return v

    @field_validator("libvirt_driver")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        if v is not None and v not in ("kvm", "qemu"):
            raise ValueError(f"{v!r} must be kvm or qemu")
        return v

    @field_validator("docker_source")
    @classmethod
    def _docker_source(cls, v: str) -> str:
        if v not in ("debian", "docker-ce"):
            raise ValueError(f"{v!r} must be 'debian' or 'docker-ce'")
        return v

    @field_validator("apt_mirror", "apt_security_mirror")
    @classmethod
    def _apt_url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v, ("http", "https", "file"))

    @field_validator("registry_probe")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v)

    @field_validator("docker_ce_mirror")
    @classmethod
    def _ce_mirror(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", v):
            raise ValueError(f"{v!r} is not a get.docker.com mirror name (e.g. Aliyun, AzureChinaCloud)")
        return v

    @field_validator("get_docker_url")
    @classmethod
    def _get_docker_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?://\S+|file:/\S+)$", v.strip()):
            raise ValueError(f"{v!r} is not an http(s) or file URL")
        return v

    @field_validator("registry_mirrors", "insecure_registries", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return _split(v, ",;")

    @field_validator("labs", mode="before")
    @classmethod
    def _path_list(cls, v: Any) -> Any:
        return _split(v, re.escape(os.pathsep))

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_url(u) for u in v)

    @field_validator("insecure_registries")
    @classmethod
    def _hostports(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for reg in v:
            if not _HOSTPORT.match(reg):
                raise ValueError(f"{reg!r} is not host[:port]")
        return v

    @field_validator("home", "cache", "host_dir")
    @classmethod
    def _folder(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()

    # -- loading -----------------------------------------------------------------

    @classmethod
    def from_env(cls, **options: Any) -> Settings:
        """The environment with the CLI ``options`` that were given (None: not given) on top."""
        given = {k: v for k, v in options.items() if v is not None}
        try:
            settings = cls(**given)
        except ValidationError as exc:
            raise _config_error(exc, given) from None
        for name in cls.model_fields:
            if name in given:
                settings._origins[name] = "option"
            elif env_names(name) and any(os.environ.get(n) for n in env_names(name)):
                settings._origins[name] = "environment"
            else:
                settings._origins[name] = "default"
        return settings

    def origin(self, name: str) -> str:
        """Where setting ``name`` came from: default, environment or option."""
        return self._origins.get(name, "default")

    def box_url(self, box: str) -> str | None:
        """``VMDOCK_BOX_URL_<BOX>`` of catalog box ``box``."""
        return self.box_urls.get(re.sub(r"[^A-Z0-9]", "_", box.upper()))

    def secret(self, name: str) -> str | None:
        return self.secrets.get(name)


def variable(name: str) -> str:
    """The variable of setting ``name`` as the README writes it."""
    if name in FAMILIES:
        return FAMILIES[name] + ("<BOX>" if name == "box_urls" else "<NAME>")
    return PREFIX + name.upper()


def env_names(name: str) -> list[str]:
    """The variables set now that give setting ``name``."""
    if name in FAMILIES:
        return [k for k in os.environ if k.startswith(FAMILIES[name])]
    return [PREFIX + name.upper()]


def _config_error(exc: ValidationError, given: dict[str, Any]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        name = loc[0] if loc else ""
        if name in given:
            where = f"{OPTIONS.get(name, name)}"
        elif name in FAMILIES and len(loc) > 1:
            where = FAMILIES[name] + loc[1]
        else:
            where = variable(name) if name else "settings"
        msg = re.sub(r"^Value error, ", "", err["msg"])
        if err["type"] != "value_error":
            msg = f"{err.get('input')!r}: {msg[:1].lower()}{msg[1:]}"
        lines.append(f"{where}: {msg}")
    hint = "set --provider or VMDOCK_PROVIDER" if lines[0].startswith(("VMDOCK_PROVIDER", "--provider")) else \
        "`vmdock config` lists every setting; the README's table explains them"
    return ConfigError("; ".join(lines), hint=hint)


_current: tuple[frozenset, Settings] | None = None


def current() -> Settings:
    """The settings of the environment as it is now (validated once per change)."""
    global _current
    key = frozenset((k, v) for k, v in os.environ.items() if k.startswith(PREFIX))
    if _current is None or _current[0] != key:
        _current = (key, Settings.from_env())
    return _current[1]


def _shown(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    if name == "secrets":
        return {k: "***" for k in value}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return value


def rows(settings: Settings, effective: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every setting: variable, value (secrets masked), where it came from, description.

    ``effective`` gives the value in use where the default is computed
    elsewhere (the home and cache folders).
    """
    out = []
    for name, field in Settings.model_fields.items():
        value = _shown(settings, name)
        if settings.origin(name) == "default" and effective and name in effective:
            value = effective[name]
        out.append({
            "name": name,
            "variable": variable(name),
            "option": OPTIONS.get(name),
            "value": value,
            "source": settings.origin(name),
            "description": field.description or "",
        })
    return out


def markdown_table() -> str:
    """The README's table of variables, made from the model."""
    lines = ["| Variable | Option | Default | Meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default in (None, (), {}):
            shown = "–"
        elif isinstance(default, bool):
            shown = f"`{int(default)}`"
        else:
            shown = f"`{default}`"
        option = f"`{OPTIONS[name]}`" if name in OPTIONS else ""
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{variable(name)}` | {option} | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"
