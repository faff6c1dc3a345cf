"""`vmdock.cli.main(argv)`: exit codes, one-line errors, no traceback unless --debug.

Everything runs in-process against the fixture labs in tests/labs/, with
VMDOCK_HOME in tmp_path and the shipped labs hidden.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from vmdock import cli
from vmdock.state import LabState

pytestmark = pytest.mark.usefixtures("vmdock_home", "no_shipped_labs")

FIXTURE_LABS = Path(__file__).resolve().parent / "labs"
GOOD = FIXTURE_LABS / "good"
BROKEN = FIXTURE_LABS / "broken"
AMBIGUOUS = FIXTURE_LABS / "ambiguous"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # Rich's default for a pipe: 80 columns


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, ANSI.sub("", out), ANSI.sub("", err)


# -- errors ------------------------------------------------------------------------------

def test_unknown_lab_is_one_line_and_no_traceback(capsys, monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    code, out, err = run(capsys, "show", "nonexistent")
    assert code == 2
    lines = err.splitlines()
    assert lines[0] == "error: unknown lab 'nonexistent' (labs: ch91-alpha, ch92-beta)"
    assert lines[1].startswith("  hint: see `vmdock list`")
    assert len(lines) == 2
    assert "Traceback" not in err and out == ""


def test_broken_lab_names_file_and_fields(capsys, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the lab is not below the current directory: its path shows whole
    # a long folder path: the error lines must not be wrapped at 80 columns
    labs = tmp_path / ("a-labs-folder-with-a-name-long-enough-to-pass-eighty-columns-" * 2)
    shutil.copytree(BROKEN / "ch93-broken", labs / "ch93-broken")
    shown = str(labs / "ch93-broken" / "lab.yaml")
    code, out, err = run(capsys, "--labs-dir", str(labs), "show", "ch93-broken")
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {shown}: machines[1].memory: Input should be a valid integer")
    fields = [line[len(f"  {shown}: "):].split(":")[0] for line in lines[1:]]
    assert all(line.startswith(f"  {shown}: ") for line in lines[1:]), lines
    assert fields == ["machines[2].cpus", "checks[0]", "colour", "steps[0].files[0]"]
    assert "Traceback" not in err


def test_broken_lab_by_chapter(capsys):
    code, _, err = run(capsys, "--labs-dir", str(BROKEN), "steps", "93")
    assert code == 2 and "machines[1].memory" in err.splitlines()[0]


def test_ambiguous_chapter(capsys):
    code, _, err = run(capsys, "--labs-dir", str(AMBIGUOUS), "show", "ch95")
    assert code == 2
    assert err.splitlines()[0] == "error: 'ch95' matches several labs: ch95-one, ch95-two; give the full name"


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    code, _, err = run(capsys, "--debug", "show", "nonexistent")
    assert code == 2
    assert "Traceback (most recent call last)" in err and "LabError" in err
    assert "error: unknown lab 'nonexistent'" in err
    # and the next run without --debug is quiet again
    code, _, err = run(capsys, "show", "nonexistent")
    assert code == 2 and "Traceback" not in err


def test_bad_setting_is_a_config_error(capsys, monkeypatch):
    monkeypatch.setenv("VMDOCK_PROVIDER", "vmware")
    code, _, err = run(capsys, "status")
    assert code == 2
    assert err.splitlines()[0] == "error: VMDOCK_PROVIDER: 'vmware' is not one of virtualbox, libvirt, docker"
    assert "hint: set --provider or VMDOCK_PROVIDER" in err and "Traceback" not in err


def test_usage_errors(capsys):
    code, _, err = run(capsys, "no-such-command")
    assert code == 2 and "No such command" in err
    code, _, err = run(capsys, "show")
    assert code == 2 and "Missing argument" in err


def test_usage_errors_have_no_traceback(capsys):
    code, _, err = run(capsys, "status", "--no-such-option")
    assert code == 2 and "No such option" in err and "Traceback" not in err


def test_version(capsys):
    code, out, err = run(capsys, "--version")
    assert code == 0 and re.fullmatch(r"vmdock \S+\n", out), err


def test_ctrl_c_is_exit_130_without_traceback(capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.labs, "summaries", interrupted)
    code, _, err = run(capsys, "list")
    assert code == 130 and "Traceback" not in err


# -- list --------------------------------------------------------------------------------

def test_list_with_vmdock_labs(capsys, monkeypatch, vmdock_home):
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    code, out, err = run(capsys, "list")
    assert code == 0, err
    assert "ch91-alpha" in out and "ch92-beta" in out and "测试实验" in out
    assert err == ""
    # nothing was written outside VMDOCK_HOME
    for p in vmdock_home.rglob("*"):
        assert vmdock_home in p.parents


def test_list_json_shows_state(capsys, monkeypatch, vmdock_home):
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    st = LabState(path=vmdock_home / "labs" / "ch91-alpha" / "state.json", lab="ch91-alpha", phase="provisioned")
    st.save()
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["broken"] == []
    rows = {r["name"]: r for r in data["labs"]}
    assert list(rows) == ["ch91-alpha", "ch92-beta"]
    assert rows["ch91-alpha"]["state"] == "provisioned" and rows["ch92-beta"]["state"] == "new"
    assert rows["ch91-alpha"]["machines"] == ["web", "db"]
    assert rows["ch91-alpha"]["title"] == "测试实验 Alpha"
    assert rows["ch91-alpha"]["folder"] == str((GOOD / "ch91-alpha").resolve())


def test_list_with_a_broken_lab_shows_the_others_and_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", str(BROKEN))
    code, out, err = run(capsys, "list", "--json")
    assert code == 2
    data = json.loads(out)
    assert [r["name"] for r in data["labs"]] == ["ch94-fine"]
    assert len(data["broken"]) == 1 and "machines[1].memory" in data["broken"][0]["error"]
    assert err.startswith("broken lab tests/labs/broken/ch93-broken/lab.yaml: ") and "colour: unknown key" in err


def test_labs_dir_option_is_repeatable(capsys):
    code, out, _ = run(capsys, "--labs-dir", str(GOOD), "--labs-dir", str(AMBIGUOUS), "list", "--json")
    assert code == 0
    assert [r["name"] for r in json.loads(out)["labs"]] == ["ch91-alpha", "ch92-beta", "ch95-one", "ch95-two"]


# -- show, steps, schema ----------------------------------------------------------------------

def test_show(capsys):
    code, out, _ = run(capsys, "--labs-dir", str(GOOD), "show", "91")
    assert code == 0
    assert out.splitlines()[0] == "ch91-alpha — 第91章 测试实验 Alpha (Test lab alpha)"
    assert "web: debian12, 1 cpu, 512 MiB, ports 127.0.0.1:8091→80" in out
    assert "2. 91.2 网页 on web" in out
    assert "- ssh port (port, on db)" in out


def test_steps_prints_the_commands(capsys):
    code, out, _ = run(capsys, "--labs-dir", str(GOOD), "steps", "ch91-alpha")
    assert code == 0
    # a step on every machine: one section per machine, in the order vmdock runs them
    assert "## 91.1 准备  (91.1 Prepare)   [on web]\nexport VMDOCK_MACHINE=web" in out
    assert "## 91.1 准备  (91.1 Prepare)   [on db]\nexport VMDOCK_MACHINE=db" in out
    assert out.count("bash setup.sh") == 2
    assert '## 91.2 网页   [on web]' in out and 'echo "WEB_PORT=80" >> "$VMDOCK_EXPORTS"' in out
    assert 'set -a; . "$VMDOCK_EXPORTS"; set +a   # WEB_PORT' in out


def test_steps_exports_every_variable_a_step_gets(capsys, vmdock_home):
    from vmdock.labcontext import step_env
    from vmdock.loader import resolve

    code, out, _ = run(capsys, "--labs-dir", str(GOOD), "steps", "ch91-alpha")
    assert code == 0
    loaded = resolve("ch91-alpha", [GOOD])
    for machine in ("web", "db"):
        # before `vmdock up` the lab has no network: the addresses are named, not given
        env = step_env(loaded.lab, machine, {}, {"DB_PASSWORD": "x"}, {})
        for key, value in env.items():
            if key == "DB_PASSWORD":
                assert "export DB_PASSWORD=...   # a secret" in out
            else:
                assert f"export {key}={value}" in out, key
    assert {"VMDOCK_LAB", "VMDOCK_MACHINE", "VMDOCK_LAB_DIR", "VMDOCK_BASE_IMAGE", "GREETING"} <= set(env)
    assert "# VMDOCK_IP_<MACHINE>: each machine's private address, chosen by `vmdock up`" in out


def test_schema_is_json_with_machines(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    data = json.loads(out)
    assert data["$schema"].startswith("https://json-schema.org/")
    assert data["title"] == "vmdock lab.yaml"
    assert "machines" in data["properties"]
    assert {"name", "title", "machines"} <= set(data["required"]) and "chapter" not in data["required"]
    assert data["additionalProperties"] is False
    step = data["$defs"]["Step"]
    assert "on" in step["properties"] and step["additionalProperties"] is False


def test_status_with_nothing_up(capsys, monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    code, out, _ = run(capsys, "status")
    assert code == 0 and "no lab has been brought up" in out
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0 and json.loads(out) == []
