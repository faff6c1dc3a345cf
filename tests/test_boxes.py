"""Box resolution (vmdock-built box vs Vagrant Cloud vs VMDOCK_BOX_URL_*), the box's apt sources
and the libvirt driver choice.

Fast: no Vagrant, no libvirt; Vagrant's box folder and the KVM probe are faked.
"""
from __future__ import annotations

import json

import pytest

from vmdock.errors import ConfigError
from vmdock.hostbuild import box_image, boxes, hostfacts
from vmdock.loader import load_lab
from vmdock.providers import libvirt
from vmdock.render import RenderOptions, render

from .seating import seat_of


def _register(home, name="vmdock/debian12", provider="libvirt", arch=None):
    folder = home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0"
    if arch:
        folder = folder / arch
    (folder / provider).mkdir(parents=True)
    (folder / provider / "metadata.json").write_text(f'{{"provider": "{provider}"}}')


@pytest.fixture
def vagrant_home(tmp_path, monkeypatch):
    home = tmp_path / "vagrant.d"
    home.mkdir()
    monkeypatch.setenv("VAGRANT_HOME", str(home))
    monkeypatch.delenv("VMDOCK_BOX_URL_DEBIAN12", raising=False)
    return home


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "labs" / "box-lab"
    folder.mkdir(parents=True)
    (folder / "lab.yaml").write_text(
        "name: box-lab\nchapter: 93\ntitle: t\nmachines:\n  - name: vm\nsteps:\n  - name: s\n    run: 'true'\n"
        "checks:\n  - name: c\n    type: command\n    run: 'true'\n",
        encoding="utf-8",
    )
    return load_lab(folder)


def test_catalog_names_the_vmdock_box():
    assert boxes.entry("debian12")["vmdock_box"] == "vmdock/debian12"
    with pytest.raises(ConfigError):
        boxes.entry("no-such-box")


@pytest.mark.parametrize("arch", [None, "amd64"])  # Vagrant 2.3 and 2.4 (architecture level) layouts
def test_registered_reads_vagrants_box_folder(vagrant_home, arch):
    assert not boxes.registered("vmdock/debian12", "libvirt")
    _register(vagrant_home, arch=arch)
    assert boxes.registered("vmdock/debian12", "libvirt")
    assert not boxes.registered("vmdock/debian12", "virtualbox")


def test_render_prefers_the_registered_vmdock_box_for_libvirt(vagrant_home, lab):
    text = render(lab, RenderOptions("libvirt", {"domain_type": "qemu"}), seat_of(lab))
    assert 'node.vm.box = "debian/bookworm64"' in text
    _register(vagrant_home)
    text = render(lab, RenderOptions("libvirt", {"domain_type": "qemu"}), seat_of(lab))
    assert 'node.vm.box = "vmdock/debian12"' in text
    assert "box_url" not in text
    # VirtualBox has no vmdock box: Vagrant Cloud's
    assert 'node.vm.box = "debian/bookworm64"' in render(lab, RenderOptions("virtualbox"), seat_of(lab))
    assert boxes.vagrant_box("debian12", "libvirt") == "vmdock/debian12"


def test_box_url_still_overrides(vagrant_home, lab, monkeypatch):
    _register(vagrant_home)
    monkeypatch.setenv("VMDOCK_BOX_URL_DEBIAN12", "file:///srv/boxes/debian12.box")
    text = render(lab, RenderOptions("libvirt", {"domain_type": "qemu"}), seat_of(lab))
    assert 'node.vm.box = "debian/bookworm64"' in text
    assert 'node.vm.box_url = "file:///srv/boxes/debian12.box"' in text


def test_libvirt_block(vagrant_home, lab):
    text = render(lab, RenderOptions("libvirt", {"domain_type": "kvm"}), seat_of(lab))
    for line in (
        'lv.driver = "kvm"',
        "lv.qemu_use_session = false",
        'lv.management_network_name = "vagrant-libvirt"',
        'lv.disk_bus = "virtio"',
        'lv.graphics_type = "none"',
        '"console-vm.log"].join("/")',
    ):
        assert line in text, line


def test_box_list_rows(vagrant_home, monkeypatch, tmp_path):
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    rows = {(r["box"], r["provider"]): r for r in boxes.list_boxes()}
    row = rows[("debian12", "libvirt")]
    assert row["vmdock_box"] == "vmdock/debian12" and not row["registered"] and row["cached"] is None
    _register(vagrant_home)
    f = boxes.box_file("debian12", "libvirt")
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x" * 10)
    f.with_name(f.name + ".json").write_text(json.dumps({"built_at": "2026-01-01T00:00:00+00:00"}))
    row = {(r["box"], r["provider"]): r for r in boxes.list_boxes()}[("debian12", "libvirt")]
    assert row["registered"] and row["uses"] == "vmdock/debian12"
    assert row["cached"]["size"] == 10 and row["cached"]["built_at"].startswith("2026")


def test_build_refuses_virtualbox():
    with pytest.raises(ConfigError, match="libvirt"):
        box_image.build(None, provider="virtualbox")


def test_libvirt_domain_type_override(monkeypatch):
    seen = []
    monkeypatch.setenv("VMDOCK_LIBVIRT_DRIVER", "qemu")
    monkeypatch.setattr(libvirt, "kvm_probe", lambda *a, **k: pytest.fail("probed despite the override"))
    assert libvirt.domain_type(seen.append) == "qemu"
    assert "VMDOCK_LIBVIRT_DRIVER" in seen[0]
    monkeypatch.setenv("VMDOCK_LIBVIRT_DRIVER", "xen")
    with pytest.raises(ConfigError):
        libvirt.domain_type()


@pytest.mark.parametrize(
    "kvm, tcg, usable",
    [
        ((True, 0.4, "booted in 0.4s"), (True, 0.5, "booted in 0.5s"), True),
        ((True, 7.0, "booted in 7.0s"), (True, 0.5, "booted in 0.5s"), False),  # nested KVM: slower than TCG
        ((False, 20.0, "no boot within 20s (hangs)"), (True, 0.5, "booted in 0.5s"), False),
    ],
)
def test_kvm_probe_compares_kvm_with_tcg_and_remembers(monkeypatch, tmp_path, kvm, tcg, usable):
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VMDOCK_LIBVIRT_DRIVER", raising=False)
    monkeypatch.setattr(hostfacts.os.path, "exists", lambda p: True)
    monkeypatch.setattr(hostfacts.os, "access", lambda p, m: True)
    monkeypatch.setattr(hostfacts, "_qemu_binary", lambda: "/usr/bin/qemu-system-x86_64")
    calls = []

    def boot(qemu, accel, disk, timeout):
        calls.append(accel)
        with open(disk, "rb") as fh:
            sector = fh.read()
        assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
        return kvm if accel == "kvm" else tcg

    monkeypatch.setattr(hostfacts, "_boot_guest", boot)
    assert hostfacts.kvm_probe()[0] is usable
    assert calls == ["kvm", "tcg"]
    assert hostfacts.kvm_probe()[0] is usable  # remembered: no second boot
    assert calls == ["kvm", "tcg"]
    facts = json.loads((tmp_path / "cache" / "host-facts.json").read_text())
    assert facts["kvm"]["usable"] is usable
    seen = []
    assert libvirt.domain_type(seen.append) == ("kvm" if usable else "qemu")
    assert seen and seen[0].startswith("libvirt domain type")


def test_box_sources_come_from_the_machines_template(monkeypatch):
    monkeypatch.delenv("VMDOCK_APT_SECURITY_MIRROR", raising=False)
    text = box_image.debian_sources("http://deb.debian.org/debian", "bookworm")
    assert text.startswith("# Written by vmdock (vmdock box build).\n")
    assert "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n" in text
    assert "URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n" in text
    local = box_image.debian_sources("http://127.0.0.1:3142/debian", "bookworm")
    assert "security" not in local  # a local mirror: no security stanza unless one is given
    monkeypatch.setenv("VMDOCK_APT_SECURITY_MIRROR", "http://127.0.0.1:3142/debian-security")
    sources = box_image.debian_sources("http://127.0.0.1:3142/debian", "bookworm")
    assert "URIs: http://127.0.0.1:3142/debian-security\n" in sources
