"""End to end: the `vmdock` command, real Vagrant (docker provider), real dockerd, real SSH.

These bring machines up for real and take minutes.  They fail (never skip)
when the host cannot run them: `scripts/host-setup.sh` prepares it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmdock.seats import Instance, instance_id

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
    return [line for line in out.splitlines() if line.strip()]


def leftovers(env, lab: str) -> dict:
    """The containers and networks of this home's instance of ``lab`` (never another home's)."""
    mine = f"label=vmdock.instance={instance_id(env['VMDOCK_HOME'], lab)}"
    return {
        "containers": docker_lines("ps", "-a", "--filter", mine, "--format", "{{.Names}}"),
        "networks": docker_lines("network", "ls", "--filter", mine, "--format", "{{.Name}}"),
    }


def clean_start(env, lab: str, labs_dir: Path | None = None):
    """Tolerate what an interrupted run left: destroy through vmdock, then by this home's instance label."""
    extra = ["--labs-dir", str(labs_dir)] if labs_dir else []
    vmdock(env, *extra, "destroy", lab, check=False)
    ids = docker_lines("ps", "-aq", "--filter", f"label=vmdock.instance={instance_id(env['VMDOCK_HOME'], lab)}")
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

        # a no-op `up` and `status` ask dockerd, not Vagrant; `status --refresh` asks Vagrant
        before = log.read_text(encoding="utf-8")
        again = vmdock(env, *args, "up", "resume-lab")
        assert "nothing to do" in again.stdout
        status = json.loads(vmdock(env, *args, "status", "resume-lab", "--json").stdout)[0]
        assert status["machines"]["box"]["state"] == "running" and status["phase"] == "provisioned"
        new = log.read_text(encoding="utf-8")[len(before):]
        inst = instance_id(env["VMDOCK_HOME"], "resume-lab")
        assert f"docker ps -a --filter label=vmdock.instance={inst}" in new and "vagrant " not in new
        vmdock(env, *args, "status", "resume-lab", "--refresh")
        assert "vagrant status" in log.read_text(encoding="utf-8")[len(before) + len(new):]

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
    assert leftovers(env, "resume-lab")["containers"] == []


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


# -- classroom: student mode, lab images, reset ---------------------------------------------

KEEPER_STEP = """\
  - name: "4 a container that keeps running"
    run: |
      docker rm -f keeper >/dev/null 2>&1 || true
      docker run -d --name keeper "$VMDOCK_BASE_IMAGE" sleep infinity
"""
KEEPER_CHECK = """\
  - name: the keeper container runs
    type: container
    container: keeper
"""


def classroom_lab(tmp_path: Path) -> Path:
    """resume-lab, fixed, with a fourth step that leaves a container running (and a check of it)."""
    labs = tmp_path / "labs"
    shutil.copytree(E2E_LABS / "resume-lab", labs / "resume-lab")
    (labs / "resume-lab" / "flag.txt").write_text("fixed\n")
    lab_yaml = labs / "resume-lab" / "lab.yaml"
    text = lab_yaml.read_text(encoding="utf-8")
    text = text.replace("checks:\n", KEEPER_STEP + "checks:\n" + KEEPER_CHECK)
    lab_yaml.write_text(text, encoding="utf-8")
    return labs


def remove_lab_images(lab: str) -> None:
    ids = docker_lines("images", "-q", "--filter", "label=vmdock.role=lab-image", "--filter", f"label=vmdock.lab={lab}")
    if ids:
        subprocess.run(["docker", "rmi", "-f", *dict.fromkeys(ids)], capture_output=True, check=False)


def test_student_mode_then_the_steps(env, tmp_path):
    labs = classroom_lab(tmp_path)
    args = ["--labs-dir", str(labs)]
    clean_start(env, "resume-lab", labs)
    try:
        vmdock(env, *args, "up", "resume-lab", "--no-steps", "--no-image")
        status = json.loads(vmdock(env, *args, "status", "resume-lab", "--json").stdout)[0]
        assert status["phase"] == "provisioned" and status["mode"].startswith("student mode")
        box = Instance(Path(env["VMDOCK_HOME"]), "resume-lab").machine_name("box")
        assert subprocess.run(["docker", "exec", box, "true"], check=False).returncode == 0  # the machine is there
        assert subprocess.run(["docker", "exec", box, "test", "-e", "/root/first.count"], check=False).returncode == 1
        failed = vmdock(env, *args, "verify", "resume-lab", "--json", check=False)
        assert failed.returncode == 1 and json.loads(failed.stdout)["passed"] == 0
        one = vmdock(env, *args, "-v", "up", "resume-lab", "--upto", "1")
        assert "first step ran 1 time" in one.stdout + one.stderr
        vmdock(env, *args, "up", "resume-lab")
        assert "4 passed, 0 failed" in vmdock(env, *args, "verify", "resume-lab").stdout
    finally:
        vmdock(env, *args, "destroy", "resume-lab", check=False)


def test_student_does_the_printed_steps_over_vmdock_ssh(env, tmp_path):
    """Student mode as a student lives it: `verify` shows expected vs seen, the student types
    what `vmdock steps` prints into `vmdock ssh` (as root, the way the printout says), and
    `verify` passes."""
    labs = classroom_lab(tmp_path)
    args = ["--labs-dir", str(labs)]
    clean_start(env, "resume-lab", labs)
    try:
        vmdock(env, *args, "up", "resume-lab", "--no-steps", "--no-image")
        failed = json.loads(vmdock(env, *args, "verify", "resume-lab", "--json", check=False).stdout)
        seen = {c["name"]: c for c in failed["checks"]}
        assert not seen["second step ran after the fix"]["passed"]
        assert "fixed" in seen["second step ran after the fix"]["expected"]

        printed = vmdock(env, *args, "steps", "resume-lab").stdout
        assert "## 4 a container that keeps running" in printed
        typed = subprocess.run(
            [sys.executable, "-m", "vmdock", *args, "ssh", "resume-lab", "box", "--", "sudo", "-i", "bash", "-e"],
            env=env, input=printed, capture_output=True, text=True, timeout=600, check=False,
        )
        assert typed.returncode == 0, typed.stdout + typed.stderr
        assert "first step ran 1 time(s)" in typed.stdout
        assert "4 passed, 0 failed" in vmdock(env, *args, "verify", "resume-lab").stdout
        # `vmdock ssh -- CMD` returns the command's own exit code
        assert vmdock(env, *args, "ssh", "resume-lab", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    finally:
        vmdock(env, *args, "destroy", "resume-lab", check=False)


def test_image_build_killed_while_capturing_then_up_puts_the_machine_back(env, tmp_path):
    """SIGKILL to `vmdock image build` while it captures (the inner dockerd stopped, its data
    being packed or committed): the next `up` puts the machine back and `verify` passes."""
    labs = classroom_lab(tmp_path)
    args = ["--labs-dir", str(labs)]
    clean_start(env, "resume-lab", labs)
    remove_lab_images("resume-lab")
    state_file = Path(env["VMDOCK_HOME"]) / "labs" / "resume-lab" / "state.json"
    try:
        vmdock(env, *args, "up", "resume-lab", "--no-image")
        build = subprocess.Popen([sys.executable, "-m", "vmdock", *args, "image", "build", "resume-lab"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(1200):  # the build verifies first, then captures
                if json.loads(state_file.read_text()).get("capturing") or build.poll() is not None:
                    break
                time.sleep(0.1)
            assert build.poll() is None, "the image build ended before it captured"
            time.sleep(1.5)  # inside the capture: dockerd stopped, /var/lib/docker being packed
        finally:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
        assert json.loads(state_file.read_text())["capturing"] == ["box"]
        up = vmdock(env, *args, "up", "resume-lab")
        assert "stopped while capturing it; putting it back" in up.stdout + up.stderr
        assert "4 passed, 0 failed" in vmdock(env, *args, "verify", "resume-lab").stdout
        assert json.loads(state_file.read_text())["capturing"] == []
    finally:
        vmdock(env, *args, "destroy", "resume-lab", check=False)
        remove_lab_images("resume-lab")


def test_lab_image_then_up_from_it_and_reset(env, tmp_path):
    labs = classroom_lab(tmp_path)
    args = ["--labs-dir", str(labs)]
    clean_start(env, "resume-lab", labs)
    remove_lab_images("resume-lab")
    box = Instance(Path(env["VMDOCK_HOME"]), "resume-lab").machine_name("box")
    try:
        built = vmdock(env, *args, "image", "build", "resume-lab")
        assert "1 lab image(s)" in built.stdout, built.stdout
        listed = json.loads(vmdock(env, *args, "image", "list", "--json").stdout)
        mine = [r for r in listed if r["lab"] == "resume-lab"]
        assert [r["machine"] for r in mine] == ["box"] and mine[0]["provider"] == "docker" and mine[0]["size"] > 0
        vmdock(env, *args, "destroy", "resume-lab")
        assert leftovers(env, "resume-lab")["containers"] == []
        assert docker_lines("images", "-q", "--filter", "label=vmdock.lab=resume-lab")  # destroy keeps it

        up = vmdock(env, *args, "up", "resume-lab")
        assert "starting from the lab image" in up.stderr + up.stdout and "nothing to do" in up.stdout
        # "first step ran exactly once" passes: no step ran again; the keeper container runs again
        assert "4 passed, 0 failed" in vmdock(env, *args, "verify", "resume-lab").stdout

        # the student breaks it: the lab's container removed, the inner dockerd killed
        subprocess.run(["docker", "exec", box, "docker", "rm", "-f", "keeper"], check=True, capture_output=True)
        subprocess.run(["docker", "exec", box, "sh", "-c", "pkill -KILL -f vmdock-dockerd; pkill -KILL -x dockerd"],
                       check=False, capture_output=True)
        assert vmdock(env, *args, "verify", "resume-lab", check=False).returncode == 1
        reset = vmdock(env, *args, "reset", "resume-lab")
        assert "nothing to do" in reset.stdout
        assert "4 passed, 0 failed" in vmdock(env, *args, "verify", "resume-lab").stdout
    finally:
        vmdock(env, *args, "destroy", "resume-lab", check=False)
        remove_lab_images("resume-lab")
    assert leftovers(env, "resume-lab")["containers"] == []
