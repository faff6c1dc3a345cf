"""End to end: the `vmdock` command, real Vagrant (docker provider), real dockerd, real SSH.

These bring machines up for real and take minutes.  They fail (never skip)
when the host cannot run them: `scripts/host-setup.sh` prepares it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
E2E_LABS = HERE / "e2e_labs"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("vmdock-home")
    e = dict(os.environ)
    e["VMDOCK_HOME"] = str(home)
    # the rootfs tarball is worth keeping between test runs
    e.setdefault("VMDOCK_CACHE", os.environ.get("VMDOCK_CACHE") or "/var/tmp/vmdock-test-cache")
    e["VMDOCK_PROVIDER"] = "docker"
    e.pop("VMDOCK_LABS", None)
    e["COLUMNS"] = "200"
    return e


def vmdock(env, *args, check=True, timeout=1800):
    proc = subprocess.run(
        [sys.executable, "-m", "vmdock", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vmdock {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def docker_lines(*args) -> list[str]:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout
    return [l for l in out.splitlines() if l.strip()]


def leftovers(lab: str) -> dict:
    return {
        "containers": docker_lines("ps", "-a", "--filter", f"label=vmdock.lab={lab}", "--format", "{{.Names}}"),
        "networks": [n for n in docker_lines("network", "ls", "--format", "{{.Name}}") if n.startswith("vagrant_network_")],
    }


def clean_start(env, lab: str, labs_dir: Path | None = None):
    """Tolerate what an interrupted run left: destroy through vmdock, then by label."""
    extra = ["--labs-dir", str(labs_dir)] if labs_dir else []
    vmdock(env, *extra, "destroy", lab, check=False)
    ids = docker_lines("ps", "-aq", "--filter", f"label=vmdock.lab={lab}")
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], check=True, capture_output=True)


def test_host_is_ready(env):
    assert shutil.which("vagrant"), "vagrant is not installed: run scripts/host-setup.sh"
    out = vmdock(env, "doctor", "--json", check=False)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["provider docker"]["status"] == "ok", rows["provider docker"]


def test_resume_after_failed_step(env, tmp_path):
    labs = tmp_path / "labs"
    shutil.copytree(E2E_LABS / "resume-lab", labs / "resume-lab")
    flag = labs / "resume-lab" / "flag.txt"
    args = ["--labs-dir", str(labs)]
    clean_start(env, "resume-lab", labs)
    try:
        failed = vmdock(env, *args, "up", "resume-lab", check=False)
        assert failed.returncode != 0
        err = failed.stderr
        assert "Traceback" not in err
        assert "2 step that fails until fixed" in err
        assert "exit 3" in err and "not fixed yet" in err
        log = Path(env["VMDOCK_HOME"]) / "labs" / "resume-lab" / "vmdock.log"
        assert str(log) in err.replace("\n", "") or "vmdock.log" in err
        status = json.loads(vmdock(env, *args, "status", "resume-lab", "--json").stdout)[0]
        assert status["phase"] == "failed"
        assert status["last_error"]["step"] == "2 step that fails until fixed"

        flag.write_text("fixed\n")
        resumed = vmdock(env, *args, "-v", "up", "resume-lab")
        assert "first step ran" not in resumed.stdout + resumed.stderr  # step 1 was not redone
        verify = vmdock(env, *args, "verify", "resume-lab")
        assert "3 passed, 0 failed" in verify.stdout

        # a check broken on purpose fails verify and shows expected vs seen
        (labs / "resume-lab" / "lab.yaml").write_text(
            (labs / "resume-lab" / "lab.yaml").read_text().replace("contains: fixed", "contains: repaired")
        )
        bad = vmdock(env, *args, "verify", "resume-lab", "--json", check=False)
        assert bad.returncode == 1
        report = json.loads(bad.stdout)
        broken = [c for c in report["checks"] if not c["passed"]]
        assert len(broken) == 1 and "'repaired'" in broken[0]["expected"] and "fixed" in broken[0]["seen"]
    finally:
        vmdock(env, *args, "destroy", "resume-lab", check=False)
    assert leftovers("resume-lab")["containers"] == []


def test_second_up_is_refused_while_one_runs(env, tmp_path):
    """The lab lock: a second `vmdock up` of the same lab is refused with a clear message."""
    from vmdock.state import lab_lock

    home = Path(env["VMDOCK_HOME"]) / "labs" / "resume-lab"
    labs = tmp_path / "labs"
    shutil.copytree(E2E_LABS / "resume-lab", labs / "resume-lab")
    with lab_lock(home, "resume-lab", "up"):
        busy = vmdock(env, "--labs-dir", str(labs), "up", "resume-lab", check=False)
    assert busy.returncode == 3
    assert "busy" in busy.stderr and "vmdock up" in busy.stderr
