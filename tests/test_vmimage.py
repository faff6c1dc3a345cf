"""Lab images of real VMs: names, versions, what Vagrant has registered, the Vagrantfile.

Fast: no libvirt; Vagrant's box folder is a temporary folder.  The Vagrantfile
that starts a machine from its lab image is checked by real Vagrant
(`vagrant validate`; for virtualbox without the provider's own checks, as
VirtualBox is not installed here).  The images themselves are made and started
in tests/test_libvirt.py.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess

import pytest

from vmdock import vmcapture, vmimage
from vmdock.errors import ConfigError
from vmdock.labimages import LabImage
from vmdock.loader import load_lab
from vmdock.render import RenderOptions, render

from .seating import seat_of

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
    _register(vagrant_home, name, "20261130090507.5", {"tag": "old"})
    _register(vagrant_home, name, "20261130100000.7", {"tag": "new", "labels": {"vmdock.steps": "[]"}})
    _register(vagrant_home, name, "0")  # added by hand without a version: older than any capture
    image = vmimage.registered_image(name)
    assert image is not None
    assert image.version == "20261130100000.7"
    assert image.info == {"tag": "new", "labels": {"vmdock.steps": "[]"}}


def test_registered_image_none_without_box_and_empty_info_without_info_json(vagrant_home):
    assert vmimage.registered_image("vmdock/lab-vm") is None
    _register(vagrant_home, "vmdock/lab-vm", "20261130090507.5")
    image = vmimage.registered_image("vmdock/lab-vm")
    assert image is not None and image.info == {}
    assert vmcapture.lab_images("libvirt") == []  # a box without a lab image's info is none


TAG = "vmdock/lab-img-lab-vm:9f86d081884c7d65"


def _lab_image(home, provider="libvirt", version="20261130100000.7"):
    labels = LabImage(TAG, "img-lab", "vm", provider, FP, "base", ("vm:docker", "1"), "2026-11-30T10:00:00+00:00",
                      "0.1", state={"steps": {}}).labels()
    folder = _register(home, vmimage.box_name("img-lab", "vm"), version, {"tag": TAG, "labels": labels})
    (folder / "box.img").write_bytes(b"qcow2")
    return folder


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "labs" / "img-lab"
    folder.mkdir(parents=True)
    (folder / "lab.yaml").write_text(
        "name: img-lab\nchapter: 96\ntitle: t\nmachines:\n  - name: vm\n  - name: other\n"
        "steps:\n  - name: s\n    run: 'true'\nchecks:\n  - name: c\n    type: command\n    run: 'true'\n",
        encoding="utf-8",
    )
    return load_lab(folder)


def test_lab_images_are_read_back_from_the_box_info(vagrant_home):
    _lab_image(vagrant_home)
    _register(vagrant_home, "vmdock/debian12", "0")  # a base box: no lab image
    images = vmcapture.lab_images("libvirt")
    assert [(i.tag, i.lab, i.machine, i.fingerprint, i.steps, i.size) for i in images] == [
        (TAG, "img-lab", "vm", FP, ("vm:docker", "1"), 5)
    ]
    assert vmcapture.lab_images("virtualbox") == []


def test_lab_boxes_name_the_exact_version_of_a_known_tag(vagrant_home):
    _lab_image(vagrant_home)
    assert vmcapture.lab_boxes({"vm": TAG, "other": "vmdock/lab-img-lab-other:0000"}) == {
        "vm": {"box": "vmdock/img-lab-vm", "version": "20261130100000.7"}
    }


def _validate(tmp_path, text, provider):
    where = tmp_path / provider
    where.mkdir()
    (where / "Vagrantfile").write_text(text, encoding="utf-8")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "validate-home"), VAGRANT_CHECKPOINT_DISABLE="1")
    cmd = ["vagrant", "validate"] + (["--ignore-provider"] if provider == "virtualbox" else [])
    return subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("provider", ["virtualbox", pytest.param("libvirt", marks=pytest.mark.libvirt)])
def test_vagrantfile_from_a_lab_image_names_its_box_and_version(vagrant_home, lab, tmp_path, provider):
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is not installed: run `sudo bash scripts/host-setup.sh`", pytrace=False)
    _lab_image(vagrant_home, provider)
    values = {"domain_type": "qemu"} if provider == "libvirt" else {}
    values["lab_boxes"] = vmcapture.lab_boxes({"vm": TAG})
    text = render(lab, RenderOptions(provider, values), seat_of(lab))
    vm, other = text.split('config.vm.define "other"')
    assert 'node.vm.box = "vmdock/img-lab-vm"' in vm
    assert 'node.vm.box_version = "20261130100000.7"' in vm and "node.vm.box_check_update = false" in vm
    assert "box_version" not in other  # a machine without a lab image: the base box
    proc = _validate(tmp_path, text, provider)
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr
