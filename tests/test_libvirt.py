"""End to end on real VMs: libvirt (KVM, or TCG where KVM is unusable), the box vmdock builds.

`vmdock box build` makes the libvirt box from the Debian mirror (cached under
the vmdock cache: a rerun on the same machine only checks it is registered);
then a small lab comes up in a real VM, Docker is provisioned in it, the lab
is verified, captured as a lab image (a versioned Vagrant box), destroyed,
brought up again from its image (timed against the first `up`), broken and
`reset`, and destroyed: no domain, volume or network of it is left, and its
lab image is removed.

These fail (never skip) when libvirt is not set up: run
`sudo bash scripts/host-setup.sh --libvirt`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from vmdock.seats import Instance

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]

HERE = Path(__file__).resolve().parent
E2E_LABS = HERE / "e2e_labs"
LAB = "libvirt-lab"
SETUP = "run `sudo bash scripts/host-setup.sh --libvirt`"
VIRSH = ["virsh", "-c", "qemu:///system"]
#: `up` from the lab image against the full `up` of the same run (the target is 40 %)
FROM_IMAGE_RATIO = 0.5


def _virsh(*args) -> list[str]:
    out = subprocess.run([*VIRSH, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"virsh {' '.join(args)}: {out.stderr.strip()}"
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def libvirt_host():
    """The host can run libvirt VMs with Vagrant; else FAIL with what to do."""
    problems = []
    for tool in ("vagrant", "virsh", "qemu-system-x86_64", "qemu-img", "debootstrap"):
        if not shutil.which(tool):
            problems.append(f"{tool} is not installed")
    if not list(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-libvirt-*")) and not list(
        Path(os.path.expanduser("~/.vagrant.d/gems")).glob("*/gems/vagrant-libvirt-*")
    ):
        problems.append("the vagrant-libvirt plugin is not installed")
    if shutil.which("virsh"):
        out = subprocess.run([*VIRSH, "pool-info", "default"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            problems.append(f"libvirtd or its default pool is not there: {out.stderr.strip()[:200]}")
    if problems:
        pytest.fail("libvirt is not set up: " + "; ".join(problems) + f" — {SETUP}", pytrace=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory, libvirt_host):
    home = tmp_path_factory.mktemp("vmdock-home")
    e = dict(os.environ)
    e["VMDOCK_HOME"] = str(home)
    # the box (and the rootfs of the lab base image) are worth keeping between runs
    e.setdefault("VMDOCK_CACHE", os.environ.get("VMDOCK_CACHE") or "/var/tmp/vmdock-test-cache")
    # Vagrant's boxes of these tests, kept beside the cache: the box stays
    # registered between runs, and the user's ~/.vagrant.d is left alone (a
    # vmdock box there changes what every render names).
    e["VAGRANT_HOME"] = str(Path(e["VMDOCK_CACHE"]) / "vagrant.d")
    e["VMDOCK_PROVIDER"] = "libvirt"
    e.pop("VMDOCK_LABS", None)
    e["COLUMNS"] = "200"
    return e


def vmdock(env, *args, check=True, timeout=2400):
    proc = subprocess.run(
        [sys.executable, "-m", "vmdock", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vmdock {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def leftovers(env) -> dict:
    inst = Instance(Path(env["VMDOCK_HOME"]), LAB)  # its domains, disks and network carry its id
    return {
        "domains": [d for d in _virsh("list", "--all", "--name") if d.startswith(inst.prefix)],
        "volumes": [v.split()[0] for v in _virsh("vol-list", "default")[2:] if v.startswith(inst.prefix)],
        "networks": [n for n in _virsh("net-list", "--all", "--name") if n == inst.network_name],
    }


def test_box_build(env):
    """`vmdock box build` leaves a cached .box and registers vmdock/debian12 with Vagrant."""
    out = vmdock(env, "box", "build", "--provider", "libvirt")
    assert "vmdock/debian12" in out.stdout
    rows = json.loads(vmdock(env, "box", "list", "--json").stdout)
    row = next(r for r in rows if r["box"] == "debian12" and r["provider"] == "libvirt")
    assert row["registered"], row
    assert row["cached"] and row["cached"]["size"] > 100e6, row
    assert row["uses"] == "vmdock/debian12", row


def test_lab_in_a_real_vm(env, tmp_path, libvirt_box):
    labs = tmp_path / "labs"
    shutil.copytree(E2E_LABS / LAB, labs / LAB)
    args = ["--labs-dir", str(labs)]
    vmdock(env, *args, "destroy", LAB, check=False)  # what an interrupted run left
    remove_lab_image(env)
    try:
        start = time.monotonic()
        up = vmdock(env, *args, "up", LAB, "--no-image")
        full_up = time.monotonic() - start
        assert "libvirt" in up.stdout + up.stderr
        assert "libvirt domain type" in up.stderr, up.stderr  # the KVM/TCG choice is reported
        assert leftovers(env)["domains"] == [Instance(Path(env["VMDOCK_HOME"]), LAB).machine_name("vm")]
        assert_verified(env, args)
        # a second `up` finds everything done
        again = vmdock(env, *args, "up", LAB)
        assert "nothing to do" in again.stdout

        from_image_up = lab_image_round_trip(env, args)
        print(f"full up {full_up:.0f}s, up from the lab image {from_image_up:.0f}s ({from_image_up / full_up:.0%})")
        assert from_image_up <= FROM_IMAGE_RATIO * full_up, (full_up, from_image_up)
    finally:
        vmdock(env, *args, "destroy", LAB, check=False)
        remove_lab_image(env)
    assert leftovers(env) == {"domains": [], "volumes": [], "networks": []}
    assert not lab_image_volumes()


def assert_verified(env, args):
    report = json.loads(vmdock(env, *args, "verify", LAB, "--json", check=False).stdout)
    assert report["failed"] == 0 and report["passed"] == 4, report


def lab_image_round_trip(env, args) -> float:
    """image build (of the lab that is up) → destroy → up from it → break it → reset; the `up`'s seconds."""
    built = vmdock(env, *args, "image", "build", LAB)
    assert "1 lab image(s)" in built.stdout, built.stdout
    rows = [r for r in json.loads(vmdock(env, *args, "image", "list", "--json").stdout) if r["lab"] == LAB]
    assert [(r["machine"], r["provider"]) for r in rows] == [("vm", "libvirt")], rows
    assert_verified(env, args)  # the machine runs on after its capture
    vmdock(env, *args, "destroy", LAB)
    assert leftovers(env)["domains"] == []
    assert lab_image_volumes(), "destroy keeps the lab image's pool volume"

    start = time.monotonic()
    up = vmdock(env, *args, "up", LAB)
    seconds = time.monotonic() - start
    assert "starting from the lab image" in up.stdout + up.stderr and "nothing to do" in up.stdout, up.stdout
    assert_verified(env, args)

    # the student breaks the lab; reset makes the machine anew from the image
    broken = subprocess.run([*ssh_argv(env, args), "sudo rm /root/container.out"], capture_output=True, text=True,
                            timeout=120)
    assert broken.returncode == 0, broken.stderr
    assert vmdock(env, *args, "verify", LAB, check=False).returncode == 1
    reset = vmdock(env, *args, "reset", LAB)
    assert "nothing to do" in reset.stdout, reset.stdout
    assert_verified(env, args)
    return seconds


def ssh_argv(env, args) -> list[str]:
    """What `vmdock ssh LAB` runs (in the test's VMDOCK_HOME)."""
    code = "import json, sys; from vmdock.engine import Engine; " \
           "print(json.dumps(Engine(labs_dirs=[sys.argv[1]]).ssh_argv(sys.argv[2], None)))"
    out = subprocess.run([sys.executable, "-c", code, args[1], LAB], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def lab_image_volumes() -> list[str]:
    prefix = f"vmdock-VAGRANTSLASH-{LAB}-vm_vagrant_box_image_"
    return [line.split()[0] for line in _virsh("vol-list", "default")[2:] if line.startswith(prefix)]


def remove_lab_image(env):
    """The lab image of this test: its Vagrant box (every version) and its pool volumes."""
    subprocess.run(["vagrant", "box", "remove", f"vmdock/{LAB}-vm", "--all", "--force"], env=env,
                   capture_output=True, text=True, timeout=300)
    for vol in lab_image_volumes():
        _virsh("vol-delete", "--pool", "default", vol)


@pytest.fixture
def libvirt_box(env):
    """The lab test needs the box: build (or find cached) it even when run alone."""
    vmdock(env, "box", "build", "--provider", "libvirt")


def test_register_box_replaces_the_version_and_fills_the_pool(libvirt_host, tmp_path, monkeypatch):
    """A tiny disk as a lab image box, twice: Vagrant and libvirt's pool hold the newest version only."""
    from vmdock import vmimage
    from vmdock.runlog import Log

    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant.d"))
    name = "vmdock/vmimage-register-test-vm"
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    log = Log(tmp_path / "register.log")
    disk = tmp_path / "box.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True, timeout=60)
    (tmp_path / "metadata.json").write_text('{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}')
    (tmp_path / "info.json").write_text('{"tag": "t"}')
    box = tmp_path / "test.box"
    with tarfile.open(box, "w") as tar:
        for f in ("metadata.json", "info.json", "box.img"):
            tar.add(tmp_path / f, arcname=f)
    versions = [vmimage.box_version("ab" * 32, dt.datetime(2026, 11, 30, 9, m, tzinfo=dt.timezone.utc)) for m in (1, 2)]
    try:
        for version in versions:
            image = vmimage.register_box(box, name, version, log)
            assert image.version == version and image.info == {"tag": "t"}
            vols = [line.split()[0] for line in _virsh("vol-list", "default")[2:] if line.startswith(prefix)]
            assert vols == [vmimage.pool_volume_name(name, version)], (vols, log.path.read_text())
        assert sorted(p.name for p in (tmp_path / "vagrant.d" / "boxes").iterdir()) == [
            name.replace("/", "-VAGRANTSLASH-")
        ]
        # `vagrant box remove` leaves the older version's folder, empty
        listed = [p.parent.parent.name for p in image.directory.parent.parent.glob("*/libvirt/metadata.json")]
        assert listed == [versions[1]], (listed, log.path.read_text())
    finally:
        for line in _virsh("vol-list", "default")[2:]:
            if line.startswith(prefix):
                _virsh("vol-delete", "--pool", "default", line.split()[0])
