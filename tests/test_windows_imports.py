"""The commands a student on Windows (VirtualBox) uses must not need POSIX-only modules.

Each command runs in a fresh interpreter where vmdock's own modules cannot
import fcntl, grp, pwd, termios or resource, as on Windows.  Libraries
(filelock, invoke) choose their platform's module themselves, so their
imports are left alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = Path(__file__).resolve().parent / "labs" / "good"

BLOCKER = """
import builtins, runpy, sys
_real = builtins.__import__
POSIX_ONLY = {"fcntl", "grp", "pwd", "termios", "resource"}
def _import(name, globals=None, *args, **kwargs):
    caller = (globals or {}).get("__name__") or ""
    if name.split(".")[0] in POSIX_ONLY and (caller == "vmdock" or caller.startswith(("vmdock.", "__main__"))):
        raise ModuleNotFoundError(f"No module named {name!r} (blocked: as on Windows)", name=name)
    return _real(name, globals, *args, **kwargs)
builtins.__import__ = _import
sys.argv = ["vmdock", *sys.argv[1:]]
runpy.run_module("vmdock", run_name="__main__")
"""


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VMDOCK_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("VMDOCK_LABS", None)
    return subprocess.run([sys.executable, "-c", BLOCKER, "--labs-dir", str(GOOD), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_blocker_blocks(tmp_path):
    code = BLOCKER.replace('runpy.run_module("vmdock", run_name="__main__")', "import fcntl")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked: as on Windows" in proc.stderr


@pytest.mark.parametrize("args, code", [
    (["list"], 0),
    (["show", "ch91-alpha"], 0),
    (["steps", "ch91-alpha"], 0),
    (["config"], 0),
    (["render", "ch91-alpha", "--provider", "docker"], 0),
    (["verify", "ch91-alpha", "--json"], 3),  # not up: every check an error, the report written
])
def test_commands_work_without_posix_only_modules(tmp_path, args, code):
    proc = run(tmp_path, *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stdout + proc.stderr
    if args[0] == "render":
        assert Path(proc.stdout.strip().replace("\n", "")).name == "Vagrantfile"
