"""Every offline lab, end to end: up → verify → no-op up → destroy (docker provider).

`python -m pytest` brings up the CI set (tests/conftest.py: CI_LABS);
`python -m pytest tests/test_labs.py --all-labs` brings up every offline lab,
`--lab ch12-network` one of them.  Real Vagrant, dockerd and SSH.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vmdock import paths
from vmdock.loader import discover
from vmdock.seats import Instance

from .test_e2e import clean_start, docker_lines, env, leftovers, vmdock  # noqa: F401  (env is a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

OFFLINE = [
    found.name for found in discover([])[0] if found.lab.offline and found.folder.parent == paths.LABS_DIR.resolve()
]


@pytest.mark.parametrize("shipped_lab", OFFLINE)
def test_offline_lab(env, shipped_lab, tmp_path, record_property):  # noqa: F811  (env: the fixture imported above)
    lab = shipped_lab
    clean_start(env, lab)

    t0 = time.monotonic()
    up = vmdock(env, "up", lab)
    record_property("up_seconds", round(time.monotonic() - t0, 1))
    assert f"{lab} is up" in up.stdout

    junit = tmp_path / "junit.xml"
    t0 = time.monotonic()
    verify = vmdock(env, "verify", lab, "--json", "--junit", str(junit), check=False)
    record_property("verify_seconds", round(time.monotonic() - t0, 1))
    report = json.loads(verify.stdout)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert not failed, json.dumps(failed, indent=2, ensure_ascii=False)
    assert verify.returncode == 0 and report["passed"] >= 2
    assert "<testsuite" in junit.read_text()

    again = vmdock(env, "up", lab)
    assert "nothing to do" in again.stdout, again.stdout

    status = json.loads(vmdock(env, "status", lab, "--json").stdout)[0]
    assert status["phase"] == "provisioned"
    assert all(m["state"] == "running" for m in status["machines"].values())

    inst = Instance(Path(env["VMDOCK_HOME"]), lab)
    machines = docker_lines("ps", "-aq", "--filter", f"label=vmdock.instance={inst.id}")
    volumes = set(docker_lines("inspect", "-f", '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}}\n{{end}}{{end}}',
                               *machines))
    destroyed = vmdock(env, "destroy", lab)
    assert "destroyed" in destroyed.stdout
    assert leftovers(env, lab) == {"containers": [], "networks": []}
    for _ in range(300):  # the machines' volumes (the inner Docker's data) are deleted in the background
        if not volumes & set(docker_lines("volume", "ls", "-q")):
            break
        time.sleep(1)
    assert not volumes & set(docker_lines("volume", "ls", "-q"))
    # destroy keeps the shared machine image, as Vagrant keeps boxes (`vmdock prune` removes unused ones)
    assert docker_lines("images", "-q", "--filter", "label=vmdock.role=machine-image")
