"""Lab images of real VMs: names, versions, what Vagrant has registered.

Fast: no Vagrant, no libvirt; Vagrant's box folder is a temporary folder.
The images themselves are made and started in tests/test_libvirt.py.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from vmdock import vmimage
from vmdock.errors import ConfigError

FP = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def vagrant_home(tmp_path, monkeypatch):
    home = tmp_path / "vagrant.d"
    home.mkdir()
    monkeypatch.setenv("VAGRANT_HOME", str(home))
    return home


def _register(home, name, version, info=None):
    folder = home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / version / "libvirt"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text('{"provider": "libvirt", "format": "qcow2", "virtual_size": 20}')
    if info is not None:
        (folder / "info.json").write_text(json.dumps(info))
    return folder


def test_box_name_per_lab_machine():
    assert vmimage.box_name("ch6-lamp", "web") == "vmdock/ch6-lamp-web"


def test_version_is_numeric_newer_sorts_higher_and_names_the_fingerprint():
    early = vmimage.box_version(FP, dt.datetime(2026, 11, 30, 9, 5, 7, tzinfo=dt.timezone.utc))
    later = vmimage.box_version("0" * 64, dt.datetime(2026, 11, 30, 10, 0, 0, tzinfo=dt.timezone.utc))
    assert early == f"20261130090507.{int(FP[:8], 16)}"
    assert all(part.isdigit() for part in early.split("."))  # Vagrant's versions are numeric
    assert tuple(map(int, later.split("."))) > tuple(map(int, early.split(".")))


def test_version_refuses_what_is_not_a_fingerprint():
    with pytest.raises(ConfigError, match="hex digits"):
        vmimage.box_version("step-3")


def test_pool_volume_name_is_vagrant_libvirts():
    # handle_box_image.rb: box name with / as -VAGRANTSLASH-, _vagrant_box_image_<version>_box.img
    assert (
        vmimage.pool_volume_name("vmdock/lab-vm", "20261130090507.1")
        == "vmdock-VAGRANTSLASH-lab-vm_vagrant_box_image_20261130090507.1_box.img"
    )


def test_registered_image_is_the_newest_version_with_its_info(vagrant_home):
    name = "vmdock/lab-vm"
    _register(vagrant_home, name, "20261130090507.5", {"fingerprint": "old"})
    _register(vagrant_home, name, "20261130100000.7", {"fingerprint": FP, "steps": ["vm:docker", "1 a step"]})
    _register(vagrant_home, name, "0")  # added by hand without a version: older than any capture
    image = vmimage.registered_image(name)
    assert image is not None
    assert image.version == "20261130100000.7"
    assert image.fingerprint == FP
    assert image.info["steps"] == ["vm:docker", "1 a step"]


def test_registered_image_none_without_box_and_no_info_is_no_fingerprint(vagrant_home):
    assert vmimage.registered_image("vmdock/lab-vm") is None
    _register(vagrant_home, "vmdock/lab-vm", "20261130090507.5")
    image = vmimage.registered_image("vmdock/lab-vm")
    assert image is not None and image.fingerprint == ""
