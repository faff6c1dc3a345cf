"""End to end on real VMs: libvirt (KVM, or TCG where KVM is unusable), the box vmdock builds.

`vmdock box build` makes the libvirt box from the Debian mirror (cached under
the vmdock cache: a rerun on the same machine only checks it is registered);
then a small lab comes up in a real VM, Docker is provisioned in it, the lab
is verified and destroyed, and no domain, volume or network of it is left.

These fail (never skip) when libvirt is not set up: run
`sudo bash scripts/host-setup.sh --libvirt`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmdock.seats import Instance

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]

HERE = Path(__file__).resolve().parent
E2E_LABS = HERE / "e2e_labs"
LAB = "libvirt-lab"
SETUP = "run `sudo bash scripts/host-setup.sh --libvirt`"
VIRSH = ["virsh", "-c", "qemu:///system"]


def _virsh(*args) -> list[str]:
    out = subprocess.run([*VIRSH, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"virsh {' '.join(args)}: {out.stderr.strip()}"
    return [l.strip() for l in out.stdout.splitlines() if l.strip()]


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
    proc = subprocess.run([sys.executable, "-m", "vmdock", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vmdock {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def leftovers(env) -> dict:
    inst = Instance(Path(env["VMDOCK_HOME"]), LAB)  # its domains, disks and network carry its id
    return {
        "domains": [d for d in _virsh("list", "--all", "--name") if d.startswith(inst.prefix)],
        "volumes": [l.split()[0] for l in _virsh("vol-list", "default")[2:] if l.startswith(inst.prefix)],
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
    try:
        up = vmdock(env, *args, "up", LAB)
        assert "libvirt" in up.stdout + up.stderr
        assert "libvirt driver" in up.stderr, up.stderr  # the KVM/TCG choice is reported
        assert leftovers(env)["domains"] == [Instance(Path(env["VMDOCK_HOME"]), LAB).machine_name("vm")]
        verify = vmdock(env, *args, "verify", LAB, "--json")
        report = json.loads(verify.stdout)
        assert report["failed"] == 0 and report["passed"] == 4, report
        # a second `up` finds everything done
        again = vmdock(env, *args, "up", LAB)
        assert "nothing to do" in again.stdout
    finally:
        vmdock(env, *args, "destroy", LAB, check=False)
    assert leftovers(env) == {"domains": [], "volumes": [], "networks": []}


@pytest.fixture
def libvirt_box(env):
    """The lab test needs the box: build (or find cached) it even when run alone."""
    vmdock(env, "box", "build", "--provider", "libvirt")
