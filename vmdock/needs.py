"""What a lab needs from outside, and whether this host can provide it.

An online lab lists the images it pulls (``needs.images``).  Before anything is
created, ``vmdock up`` checks that each can be had: from a folder of image
tarballs (``--images-dir`` / ``VMDOCK_IMAGES_DIR``, made with ``docker save``),
from the tarballs an imported bundle left in ``cache_dir()/images``
(``vmdock bundle import``), through a configured registry mirror, or from
Docker Hub itself.  When none
works it stops with one message that says what is missing and the two ways to
provide it.
"""
from __future__ import annotations

import json
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import paths
from .errors import ConfigError, MissingError
from .settings import Settings
from .settings import current as current_settings

DEFAULT_PROBE = "https://registry-1.docker.io/v2/"


def normalize(ref: str) -> str:
    """`mongo` → `docker.io/library/mongo:latest`, so references compare."""
    name, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
    if "@" in ref:
        name, tag = ref.split("@", 1)[0], ref.split("@", 1)[1]
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["docker.io", "library", parts[0]]
    elif "." not in parts[0] and ":" not in parts[0] and parts[0] != "localhost":
        parts = ["docker.io", *parts]
    return "/".join(parts) + ":" + tag


def tarball_tags(path: Path) -> list[str]:
    """The RepoTags a `docker save` tarball carries."""
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                return []
            manifest = json.load(member)
    except (OSError, KeyError, tarfile.TarError, ValueError):
        return []
    return [t for entry in manifest for t in (entry.get("RepoTags") or [])]


def images_dir_index(folder: str | None) -> dict[str, Path]:
    """normalized image reference → tarball, for every `docker save` tarball in the folder."""
    if not folder:
        return {}
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise ConfigError(f"--images-dir / VMDOCK_IMAGES_DIR: {d} is not a folder")
    index: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz")):
            for tag in tarball_tags(p):
                index.setdefault(normalize(tag), p)
    return index


def bundle_images_dir() -> Path:
    """Where `vmdock bundle import` puts the image tarballs of online labs."""
    return paths.cache_dir() / "images"


def registry_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    url = current_settings().registry_probe or DEFAULT_PROBE
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout)
        return True, f"{url} answers"
    except urllib.error.HTTPError as exc:  # 401 is what a registry says to strangers
        return True, f"{url} answers (HTTP {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"


def check(
    lab, settings: Settings, loaded: list[str] | None = None, on_info: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Return the tarballs to load for the lab's images; raise MissingError when some cannot be had.

    ``loaded``: images already loaded into the lab's machines by an earlier `up`.
    The images folder wins over the bundle's folder; ``on_info`` hears which
    images come from the bundle.
    """
    done = {normalize(r) for r in (loaded or [])}
    wanted = [r for r in dict.fromkeys(lab.needs.images) if normalize(r) not in done]
    if not wanted:
        return {}
    bundled = bundle_images_dir()
    index = {**(images_dir_index(str(bundled)) if bundled.is_dir() else {}), **images_dir_index(settings.images_dir)}
    from_dir = {ref: index[normalize(ref)] for ref in wanted if normalize(ref) in index}
    for ref, tarball in from_dir.items():
        if on_info and tarball.parent == bundled:
            on_info(f"{lab.name} needs {ref}: from the bundle ({tarball})")
    missing = [ref for ref in wanted if ref not in from_dir]
    if not missing or settings.registry_mirrors:
        return from_dir
    ok, detail = registry_reachable()
    if ok:
        return from_dir
    raise MissingError(
        f"needs images that no registry here can serve: {', '.join(missing)} (registry probe: {detail})",
        lab=lab.name,
        hint=(
            "either set a registry mirror, e.g. VMDOCK_REGISTRY_MIRRORS=https://<mirror> "
            "(written to each machine's daemon.json), or load them from tarballs: on a machine that has "
            f"them, `docker save -o DIR/<name>.tar {' '.join(missing)}`, then `vmdock up {lab.name} --images-dir DIR` "
            "(or VMDOCK_IMAGES_DIR=DIR), or import a bundle made there (`vmdock bundle export FILE "
            f"{lab.name}`, then `vmdock bundle import FILE` here)"
        ),
    )
