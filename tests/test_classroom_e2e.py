"""A class, end to end, with shipped labs (docker provider; real Vagrant, dockerd and SSH).

ch6-lamp: the full `up` → verify → `image build` → destroy (the images stay) → `up` from the
lab image → verify; the student breaks it (the web container removed, the inner dockerd
killed) → `reset` → verify; then the offline proof: a bundle of ch6 carried to a host that has
neither its lab image, nor the machine image, nor a rootfs cache, nor a vmdock home, and whose
apt mirror is a closed port (any apt use fails) → `bundle import` → `up` → verify.

ch10-registry (a registry with TLS and htpasswd, a client that trusts its CA) and
ch18-swarm-compose (a swarm of three, a stack deployed on it): full `up` → verify →
`image build` → destroy → `up` from the lab images → every check passes again.

These replace the plain up/verify/destroy runs of ch6 and ch10 in tests/test_labs.py: they do
all of that and more.  CI brings up ch6 and ch10 here (tests/conftest.py: CI_IMAGE_LABS); ch18
with `--lab ch18-swarm-compose` or `--all-labs`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vmdock.hostbuild import machine_image
from vmdock.seats import Instance

from .test_e2e import clean_start, docker_lines, env, leftovers, remove_lab_images, vmdock  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

CLOSED_MIRROR = "http://127.0.0.1:9/debian"  # the discard port: nothing answers, any apt use fails


def timed(record_property, what: str, where: dict, *args, **kw):
    t0 = time.monotonic()
    out = vmdock(where, *args, **kw)
    record_property(f"{what}_seconds", round(time.monotonic() - t0, 1))
    return out


def verify_passes(where: dict, lab: str) -> dict:
    proc = vmdock(where, "verify", lab, "--json", check=False)
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert proc.returncode == 0 and not failed, json.dumps(failed, indent=2, ensure_ascii=False)
    return report


def lab_image_tags(lab: str) -> list[str]:
    return docker_lines("images", "--filter", "label=vmdock.role=lab-image", "--filter", f"label=vmdock.lab={lab}",
                        "--format", "{{.Repository}}:{{.Tag}}")


def test_ch6_lab_image_reset_and_the_offline_bundle(env, tmp_path, record_property):  # noqa: F811
    lab = "ch6-lamp"
    clean_start(env, lab)
    remove_lab_images(lab)
    machine = Instance(Path(env["VMDOCK_HOME"]), lab).machine_name("docker")
    student = dict(env, VMDOCK_HOME=str(tmp_path / "student-home"), VMDOCK_CACHE=str(tmp_path / "student-cache"),
                   VMDOCK_APT_MIRROR=CLOSED_MIRROR)
    try:
        timed(record_property, "full_up", env, "up", lab)
        verify_passes(env, lab)
        built = timed(record_property, "image_build", env, "image", "build", lab)
        assert "1 lab image(s)" in built.stdout, built.stdout
        (tag,) = lab_image_tags(lab)
        vmdock(env, "destroy", lab)
        assert leftovers(env, lab)["containers"] == [] and lab_image_tags(lab) == [tag]  # destroy keeps it

        up = timed(record_property, "up_from_image", env, "up", lab)
        assert f"starting from the lab image {tag}" in up.stdout + up.stderr and "nothing to do" in up.stdout
        verify_passes(env, lab)  # the containers that ran at capture run again, no step ran
        assert "nothing to do" in vmdock(env, "up", lab).stdout

        # the student breaks it: the web container removed, the inner dockerd killed
        subprocess.run(["docker", "exec", machine, "docker", "rm", "-f", "lamp-web"], check=True, capture_output=True)
        subprocess.run(["docker", "exec", machine, "sh", "-c", "pkill -KILL -f vmdock-dockerd; pkill -KILL -x dockerd"],
                       check=False, capture_output=True)
        assert vmdock(env, "verify", lab, check=False).returncode == 1
        timed(record_property, "reset", env, "reset", lab)
        verify_passes(env, lab)

        # the teacher carries it: one file
        bundle = tmp_path / "class.vmdock"
        timed(record_property, "bundle_export", env, "bundle", "export", str(bundle), lab)
        vmdock(env, "destroy", lab)
        # a host that never had any of it: no lab image, no machine image, an empty cache, a new home
        machine_ref = machine_image.machine_image_tag()
        subprocess.run(["docker", "rmi", tag, machine_ref], check=True, capture_output=True)
        assert lab_image_tags(lab) == [] and not docker_lines("images", "-q", machine_ref)

        imported = timed(record_property, "bundle_import", student, "bundle", "import", str(bundle))
        assert "loaded: docker-images" in imported.stdout, imported.stdout
        assert lab_image_tags(lab) == [tag] and docker_lines("images", "-q", machine_ref)
        up = timed(record_property, "offline_up", student, "up", lab)
        said = up.stdout + up.stderr
        assert f"starting from the lab image {tag}" in said and "run again" not in said, said
        report = verify_passes(student, lab)
        assert report["passed"] >= 4
        # the machine's apt sources now name the closed mirror: nothing after them used apt
        student_machine = Instance(Path(student["VMDOCK_HOME"]), lab).machine_name("docker")
        sources = subprocess.run(["docker", "exec", student_machine, "cat", "/etc/apt/sources.list.d/debian.sources"],
                                 capture_output=True, text=True, check=True).stdout
        assert CLOSED_MIRROR in sources
    finally:
        vmdock(student, "destroy", lab, check=False)
        vmdock(env, "destroy", lab, check=False)
        remove_lab_images(lab)
        shutil.rmtree(tmp_path / "student-cache", ignore_errors=True)
    assert leftovers(env, lab)["containers"] == [] and leftovers(student, lab)["containers"] == []


#: multi-machine labs and what their lab images must keep: addresses, the registry's TLS and
#: password and the client's trust in its CA (ch10); swarm membership, services and the overlay
#: network's service discovery (ch18)
MULTI = {"ch10-registry": 2, "ch18-swarm-compose": 3}


@pytest.mark.parametrize("image_lab", sorted(MULTI))
def test_multi_machine_lab_from_its_lab_images(env, image_lab, record_property):  # noqa: F811
    lab = image_lab
    clean_start(env, lab)
    remove_lab_images(lab)
    try:
        timed(record_property, "full_up", env, "up", lab)
        checks = verify_passes(env, lab)["passed"]
        built = timed(record_property, "image_build", env, "image", "build", lab)
        assert f"{MULTI[lab]} lab image(s)" in built.stdout, built.stdout
        vmdock(env, "destroy", lab)
        up = timed(record_property, "up_from_image", env, "up", lab)
        assert "starting from the lab image" in up.stdout + up.stderr and "nothing to do" in up.stdout
        assert verify_passes(env, lab)["passed"] == checks  # every check, with no step run again
    finally:
        vmdock(env, "destroy", lab, check=False)
        remove_lab_images(lab)
    assert leftovers(env, lab)["containers"] == []
