"""End to end: what vmdock reports about a real lab (docker provider, real Vagrant, dockerd and SSH).

tests/e2e_labs/report-lab has a secret that its first step prints and a
second step that fails at line 3 of its own `run:` until mode.txt says
"fixed".  One bring-up proves: the error names the lab file's line, no
secret is in the log, the output or the machine's /tmp, `vmdock ssh -- CMD`
runs as the login user with docker and returns the command's code, and
`vmdock test` goes up → verify → destroy with a JUnit report.
"""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.test_e2e import E2E_LABS, clean_start, leftovers, vmdock

pytestmark = pytest.mark.e2e

LAB = "report-lab"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["VMDOCK_HOME"] = str(tmp_path_factory.mktemp("vmdock-home"))
    e.setdefault("VMDOCK_CACHE", "/var/tmp/vmdock-test-cache")  # the rootfs tarball is worth keeping
    e["VMDOCK_PROVIDER"] = "docker"
    e.pop("VMDOCK_LABS", None)
    e["COLUMNS"] = "200"
    return e


def test_a_failing_step_secrets_ssh_and_vmdock_test(env, tmp_path):
    labs = tmp_path / "labs"
    shutil.copytree(E2E_LABS / LAB, labs / LAB)
    (labs / LAB / "mode.txt").write_text("broken\n")
    args = ["--labs-dir", str(labs)]
    home = Path(env["VMDOCK_HOME"]) / "labs" / LAB
    clean_start(env, LAB, labs)
    try:
        failed = vmdock(env, *args, "-v", "up", LAB, check=False)
        assert failed.returncode == 3, failed.stderr
        token = json.loads((home / "state.json").read_text())["secrets"]["REPORT_TOKEN"]
        # the error names the lab file and the line of the step's own `run:`
        where = f"{labs / LAB / 'lab.yaml'}: steps[1].run line 3"
        err = failed.stderr.replace("\n", "")
        assert f"failed at {where}: NETWORK: unbound variable" in err, failed.stderr
        assert f"    {where}: NETWORK: unbound variable" in failed.stderr
        # the secret: masked in -v output, the log and the error; nothing left in the machine
        assert "the token is ***" in failed.stderr
        assert token not in failed.stdout + failed.stderr
        assert token not in (home / "vmdock.log").read_text()
        left = vmdock(env, *args, "ssh", LAB, "--", f"sudo ls -A /tmp/vmdock; sudo grep -rlF -- {token} /tmp /var/tmp",
                      check=False)
        assert left.returncode == 1, left.stdout + left.stderr  # grep found nothing
        assert "step" not in left.stdout and "exports" not in left.stdout, left.stdout

        status = vmdock(env, *args, "status", LAB).stdout
        assert "last error: box / 2 a step that fails at its line 3 until fixed: failed at" in status.replace("\n", "")
        assert "command: [step2] mode=$(cat mode.txt) (exit 1)" in status

        # the login user uses docker like the book's reader; the command's exit code comes back
        ps = vmdock(env, *args, "ssh", LAB, "--", "docker", "ps", "--format", "{{.Names}}")
        assert ps.returncode == 0 and ps.stderr == ""
        assert vmdock(env, *args, "ssh", LAB, "box", "--", "id -un; id -nG").stdout.split()[:1] == ["vagrant"]
        assert "docker" in vmdock(env, *args, "ssh", LAB, "--", "id", "-nG").stdout.split()
        assert vmdock(env, *args, "ssh", LAB, "--", "sh", "-c", "exit 7", check=False).returncode == 7

        # verify of a lab whose up failed: every check an error, the report written, exit 3
        junit = tmp_path / "down.xml"
        down = vmdock(env, *args, "verify", LAB, "--junit", str(junit), check=False)
        assert down.returncode == 3
        suite = ET.parse(junit).getroot().find("testsuite")
        assert (suite.get("tests"), suite.get("errors")) == ("2", "2")

        # fixed: `vmdock test` resumes the lab, verifies and destroys it
        (labs / LAB / "mode.txt").write_text("fixed\n")
        junit = tmp_path / "test.xml"
        tested = vmdock(env, *args, "test", LAB, "--destroy", "always", "--junit", str(junit), check=False)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        suite = ET.parse(junit).getroot().find("testsuite")
        assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
        assert "2 passed, 0 failed" in tested.stdout and f"{LAB}: destroyed" in tested.stderr
        assert leftovers(env, LAB)["containers"] == []
    finally:
        vmdock(env, *args, "destroy", LAB, check=False)
