"""End to end: two seats of one lab on one host, and `vmdock up` killed at any moment.

Real Vagrant (docker provider), real dockerd, real SSH, real HTTP through the
forwarded ports.  These fail (never skip) when the host cannot run them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vmdock.seats import instance_id

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
SEATS = Path(os.environ.get("VMDOCK_TEST_SEATS_DIR", "/var/tmp/vmdock-seats"))
LAB = "ch2-containers"
# each seat moves its ports as a block, clear of every shipped lab's (8000-8199), so that a
# ch2-containers brought up by anyone else on this host keeps its own 8020
OFFSETS = (2000, 3000)


def seat_env(home: Path, **extra: str) -> dict:
    e = dict(os.environ)
    e.update(VMDOCK_HOME=str(home), VMDOCK_PROVIDER="docker", COLUMNS="200")
    e.setdefault("VMDOCK_CACHE", "/var/tmp/vmdock-test-cache")
    for k in ("VMDOCK_LABS", "VMDOCK_PORT_OFFSET"):
        e.pop(k, None)
    e.update(extra)
    return e


def vmdock(env: dict, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vmdock", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vmdock {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def containers(instance: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "--filter", f"label=vmdock.instance={instance}",
         "--format", "{{.ID}} {{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:  # loopback only
        return resp.read().decode("utf-8", "replace")


def forwarded(env: dict) -> dict[int, int]:
    """guest port → the seat's host port, as `vmdock status --json` tells."""
    row = json.loads(vmdock(env, "status", LAB, "--json").stdout)[0]
    return {p["guest"]: p["host"] for p in row["ports"]}


def test_two_seats_of_one_lab_side_by_side():
    homes = [SEATS / "home1", SEATS / "home2"]
    envs = [seat_env(h, VMDOCK_PORT_OFFSET=str(o)) for h, o in zip(homes, OFFSETS, strict=True)]
    ids = [instance_id(h, LAB) for h in homes]
    assert ids[0] != ids[1]
    for e in envs:
        vmdock(e, "destroy", LAB, check=False)
    try:
        # --no-image: the full path, whatever lab images this host has
        ups = [subprocess.Popen([sys.executable, "-m", "vmdock", "up", LAB, "--no-image"], env=e,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in envs]
        results = [p.communicate(timeout=2400) for p in ups]
        for p, (out, err) in zip(ups, results, strict=True):
            assert p.returncode == 0, f"up exited {p.returncode}\n{out}\n{err}"
        for e, inst in zip(envs, ids, strict=True):
            assert "0 failed" in vmdock(e, "verify", LAB).stdout
            [line] = containers(inst)
            assert line.split()[1] == f"vmdock-{inst}-{LAB}-docker"
        rows = [json.loads(vmdock(e, "status", LAB, "--json").stdout)[0] for e in envs]
        assert rows[0]["instance"] == ids[0] and rows[1]["instance"] == ids[1]
        assert rows[0]["network"] != rows[1]["network"]
        ports = [forwarded(e) for e in envs]
        assert ports[0][8080] == 8020 + OFFSETS[0] and ports[1][8080] == 8020 + OFFSETS[1]
        for p in ports:  # each seat's page through its own forwarded port, from the host
            assert "VMDOCK-CH2-CUSTOM-PAGE" in fetch(p[8080])

        # the second seat on the first one's ports: refused before anything changes, naming the holder
        clash = vmdock(seat_env(homes[1], VMDOCK_PORT_OFFSET=str(OFFSETS[0])), "up", LAB, check=False)
        assert clash.returncode != 0 and "Traceback" not in clash.stderr
        said = " ".join(clash.stderr.split())
        assert f"127.0.0.1:{8020 + OFFSETS[0]}" in said and f"instance {ids[0]}" in said and str(homes[0]) in said
        assert "--port-offset" in said
        assert forwarded(envs[1])[8080] == 8020 + OFFSETS[1]

        listing = json.loads(vmdock(envs[0], "status", "--all", "--json").stdout)
        mine = {r["instance"]: r for r in listing if r["instance"] in ids}
        assert set(mine) == set(ids) and mine[ids[1]]["home"] == str(homes[1])

        vmdock(envs[0], "destroy", LAB)
        assert containers(ids[0]) == []
        assert "0 failed" in vmdock(envs[1], "verify", LAB).stdout
        assert "VMDOCK-CH2-CUSTOM-PAGE" in fetch(ports[1][8080])
    finally:
        for e in envs:
            vmdock(e, "destroy", LAB, check=False)
    assert containers(ids[0]) == [] and containers(ids[1]) == []


# -- SIGKILL at any moment of `vmdock up` ------------------------------------------------

KILL_LAB = "kill-lab"


def _kill_lab(labs: Path) -> None:
    """resume-lab, fixed, with a slow step to be killed in."""
    shutil.copytree(HERE / "e2e_labs" / "resume-lab", labs / "resume-lab")
    folder = labs / KILL_LAB
    (labs / "resume-lab").rename(folder)
    (folder / "flag.txt").write_text("fixed\n")
    text = (folder / "lab.yaml").read_text()
    text = text.replace("name: resume-lab", f"name: {KILL_LAB}").replace(
        '  - name: "3 last step"',
        '  - name: "2b slow step"\n    run: |\n      echo "slow step started"\n      sleep 30\n'
        '      echo done > /root/slow.done\n  - name: "3 last step"',
    )
    (folder / "lab.yaml").write_text(text)


def _up_until(env: dict, labs: Path, ready, what: str, timeout: float = 900) -> str:
    """Start `vmdock -v up`, SIGKILL its whole process group once ``ready(output)``; return the output."""
    out_path = labs.parent / f"up-{what.replace(' ', '-')}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmdock", "-v", "--labs-dir", str(labs), "up", KILL_LAB, "--no-image"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while not ready(out_path.read_text(errors="replace")):
                assert proc.poll() is None, f"up ended before {what}:\n{out_path.read_text()}"
                assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{out_path.read_text()}"
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"up was not killed {what} (exit {proc.returncode})"
    return out_path.read_text(errors="replace")


def test_up_killed_at_any_moment_converges_on_the_next_up(tmp_path):
    labs = tmp_path / "labs"
    _kill_lab(labs)
    home = tmp_path / "home"
    env = seat_env(home)
    inst = instance_id(home, KILL_LAB)
    state = home / "labs" / KILL_LAB / "state.json"
    vagrant_id = home / "labs" / KILL_LAB / ".vagrant" / "machines" / "box" / "docker" / "id"
    try:
        # 1. inside `vagrant up`: as soon as its container exists, before Vagrant wrote its id
        _up_until(env, labs, lambda _out: bool(containers(inst)), "during vagrant up")
        [orphan] = containers(inst)
        orphaned = not (vagrant_id.exists() and vagrant_id.read_text().strip() == orphan.split()[0])

        # 2. the next up gets past `vagrant up`; killed while provisioning (installing Docker)
        booted_at: list[float] = []

        def provisioning(_out: str) -> bool:
            data = json.loads(state.read_text()) if state.exists() else {}
            if data.get("phase") == "booted" and not booted_at:
                booted_at.append(time.monotonic())
            return bool(booted_at) and time.monotonic() - booted_at[0] > 3

        out = _up_until(env, labs, provisioning, "during provisioning")
        if orphaned:
            assert f"vmdock-{inst}-{KILL_LAB}-box" in out and "Vagrant did not know" in out, out
        assert "already in use" not in out

        # 3. the next up resumes; killed in the middle of a lab step
        _up_until(env, labs, lambda o: "slow step started" in o, "during a step")

        vmdock(env, "--labs-dir", str(labs), "up", KILL_LAB, "--no-image")
        assert "0 failed" in vmdock(env, "--labs-dir", str(labs), "verify", KILL_LAB).stdout
        assert len(containers(inst)) == 1
    finally:
        vmdock(env, "--labs-dir", str(labs), "destroy", KILL_LAB, check=False)
    assert containers(inst) == []
