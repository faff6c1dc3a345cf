"""Where things live: the files shipped with vmdock and the vmdock home."""
from __future__ import annotations

import os
from pathlib import Path

from . import settings

PACKAGE_DIR = Path(__file__).resolve().parent


def _share_dir() -> Path:
    """The top-level data folders (labs/, templates/, provisioners/, boxes/).

    In a source checkout they sit beside the package; in an installed wheel
    they are packed into ``vmdock/_share``.
    """
    packed = PACKAGE_DIR / "_share"
    if packed.is_dir():
        return packed
    return PACKAGE_DIR.parent


SHARE = _share_dir()
LABS_DIR = SHARE / "labs"
TEMPLATES_DIR = SHARE / "templates"
PROVISIONERS_DIR = SHARE / "provisioners"
BOXES_DIR = SHARE / "boxes"
VAGRANTFILE_TEMPLATE = SHARE / "Vagrantfile.j2"


def vmdock_home() -> Path:
    home = settings.current().home
    if home:
        return home
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "vmdock"


def lab_home(lab_name: str) -> Path:
    """Per-lab folder: Vagrantfile, .vagrant/, state.json, vmdock.log."""
    return vmdock_home() / "labs" / lab_name


def state_file(lab_name: str) -> Path:
    """A lab's state (``vmdock.state.LabState``) in its folder."""
    return lab_home(lab_name) / "state.json"


def cache_dir() -> Path:
    """Downloads and builds worth keeping (rootfs tarballs); VMDOCK_CACHE overrides."""
    cache = settings.current().cache
    if cache:
        return cache
    return vmdock_home() / "cache"
