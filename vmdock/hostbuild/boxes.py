"""Base boxes: the catalog (``boxes/boxes.yaml``) and which box a machine gets.

* ``catalog``: box name (``debian12``) → its entry: a title, the Debian
  suite, the Vagrant Cloud box per provider, and ``vmdock_box``: the name
  under which a box built by vmdock (``box_image``) is registered with
  Vagrant (``vmdock/debian12``).
* ``vagrant_box``: the box a Vagrantfile names for a provider: the vmdock
  box when it is registered with Vagrant (seen in Vagrant's box folder, no
  ``vagrant`` call), else the catalog's Vagrant Cloud name.
"""
from __future__ import annotations

import glob
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .. import paths, settings
from ..errors import ConfigError
from . import fsutil
from .rootfs import debian_arch


@lru_cache(maxsize=1)
def catalog() -> dict:
    with open(paths.BOXES_DIR / "boxes.yaml", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{paths.BOXES_DIR / 'boxes.yaml'}: expected a mapping of box names")
    return data


def entry(box: str) -> dict:
    found = catalog().get(box)
    if not isinstance(found, dict):
        raise ConfigError(f"unknown box {box!r} (boxes: {', '.join(catalog())})")
    return found


def url_override(box: str) -> str | None:
    """``VMDOCK_BOX_URL_<BOX>``: a mirror URL or a local .box file for ``box``."""
    return settings.current().box_url(box)


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d").expanduser()


def registered(name: str, provider: str) -> bool:
    """Whether Vagrant has box ``name`` for ``provider``, read from its box folder.

    Vagrant keeps ``boxes/<name with / as -VAGRANTSLASH->/<version>/<provider>/``
    (Vagrant 2.4 adds an architecture level).  No ``vagrant`` call: this runs
    on every render.
    """
    folder = vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    pattern = glob.escape(str(folder))
    return any(
        glob.glob(f"{pattern}/*/{provider}/metadata.json") + glob.glob(f"{pattern}/*/*/{provider}/metadata.json")
    )


def own_box(e: dict, provider: str) -> str | None:
    """The vmdock-built box of catalog entry ``e`` when Vagrant has it for ``provider``."""
    own = e.get("vmdock_box")
    if own and provider == "libvirt" and registered(own, provider):
        return own
    return None


def vagrant_box(box: str, provider: str) -> str | None:
    """The Vagrant box name for ``box`` on ``provider`` (None: the catalog has none).

    ``VMDOCK_BOX_URL_<BOX>`` set: the catalog's name (Vagrant fetches it from
    that URL).  Else a box built by ``vmdock box build`` and registered with
    Vagrant wins over the catalog's Vagrant Cloud name.
    """
    e = entry(box)
    return (None if url_override(box) else own_box(e, provider)) or e.get(provider) or None


def box_file(box: str = "debian12", provider: str = "libvirt", arch: str | None = None) -> Path:
    """Where the ``.box`` vmdock builds is cached (it may not exist yet)."""
    return paths.cache_dir() / "boxes" / f"{box}-{provider}-{arch or debian_arch()}.box"


def _row(name: str, e: dict, provider: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "box": name,
        "title": e.get("title", ""),
        "provider": provider,
        "catalog": e.get(provider),
        "vmdock_box": e.get("vmdock_box") if provider == "libvirt" else None,
        "registered": False,
        "cached": None,
        "uses": None,
        "url_override": url_override(name),
    }
    if provider == "docker":
        row["uses"] = "vmdock machine image (built on first `vmdock up`)"
        return row
    own = row["vmdock_box"]
    row["registered"] = bool(own) and registered(own, provider)
    row["uses"] = vagrant_box(name, provider)
    f = box_file(name, provider)
    if own and f.is_file():
        row["cached"] = {"file": str(f), "size": f.stat().st_size, "built_at": fsutil.read_sidecar(f).get("built_at")}
    return row


def list_boxes() -> list[dict]:
    """Every catalog box × provider: what render would use, and vmdock's own build."""
    rows = []
    for name, e in catalog().items():
        if not isinstance(e, dict):
            continue
        for provider in ("virtualbox", "libvirt", "docker"):
            if provider in e or (provider == "libvirt" and e.get("vmdock_box")):
                rows.append(_row(name, e, provider))
    return rows
