"""What vmdock reports: exit statuses, reports written when checks cannot run,
lab strings never sent raw to the terminal, tables at 80 columns.

In-process through `vmdock.cli.main` where nothing is brought up, and through
the real `python -m vmdock` (COLUMNS=80) for the table widths.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.cells import cell_len

from vmdock import cli, errors
from vmdock.engine import Engine
from vmdock.state import LabState

pytestmark = pytest.mark.usefixtures("vmdock_home", "no_shipped_labs")

GOOD = Path(__file__).resolve().parent / "labs" / "good"

HOSTILE = "evil \x1b]0;pwned\x07 \x1b[2J \x9b31m \u202eright-to-left"

LONG_LAB = """\
name: ch97-quite-a-long-lab-name
chapter: 97
title: {title}
title_en: "A title long enough that it has to wrap in a table at eighty columns, more than once"
machines:
  - name: manager-one
  - name: worker-two
  - name: worker-three
steps:
  - name: {title}
    run: echo hi
checks:
  - name: {title}
    type: command
    run: "true"
  - name: a check with a name that is a whole sentence, as the labs write them
    type: port
    port: 22
    on: worker-three
"""


def _long_lab(tmp_path: Path, title: str) -> Path:
    labs = tmp_path / "labs"
    (labs / "ch97-quite-a-long-lab-name").mkdir(parents=True)
    (labs / "ch97-quite-a-long-lab-name" / "lab.yaml").write_text(
        LONG_LAB.format(title=json.dumps(title)), encoding="utf-8")
    return labs


@pytest.fixture
def long_lab(tmp_path) -> Path:
    return _long_lab(tmp_path, "a title long enough to wrap in a table of eighty columns, " * 2)


@pytest.fixture
def hostile_lab(tmp_path) -> Path:
    return _long_lab(tmp_path, HOSTILE)


def failed_state(
    home: Path, message: str = "failed at labs/ch97/lab.yaml: steps[0].run line 3: NETWORK: unbound variable"
) -> None:
    """The state `vmdock up` leaves after a failed step: two machines made, one not."""
    st = LabState(path=home / "labs" / "ch97-quite-a-long-lab-name" / "state.json", lab="ch97-quite-a-long-lab-name",
                  phase="failed", provider="docker")
    ssh = {"host": "127.0.0.1", "port": 2222, "user": "vagrant", "identity_files": []}
    st.machines = {"manager-one": {"id": "a", "ssh": ssh}, "worker-two": {"id": "b", "ssh": ssh}}
    st.last_error = {"message": message,
                     "machine": "worker-two", "step": "1 join the swarm", "command": "[step1] docker swarm join",
                     "exit_code": 1, "stderr_tail": ""}
    st.save()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- exit statuses ------------------------------------------------------------------------------

def test_exit_status_of_each_error_class():
    assert (errors.EXIT_OK, errors.EXIT_CHECK_FAILED, errors.EXIT_BAD_INPUT, errors.EXIT_INFRASTRUCTURE,
            errors.EXIT_MISSING, errors.EXIT_INTERRUPTED) == (0, 1, 2, 3, 4, 130)
    statuses = {cls.__name__: cls.exit_status for cls in (
        errors.LabError, errors.ConfigError, errors.StateError, errors.CommandError, errors.ProviderError,
        errors.ProvisionError, errors.UnreachableError, errors.BusyError, errors.MissingError, errors.VmdockError)}
    assert statuses == {"LabError": 2, "ConfigError": 2, "StateError": 2, "CommandError": 3, "ProviderError": 3,
                        "ProvisionError": 3, "UnreachableError": 3, "BusyError": 3, "MissingError": 4, "VmdockError": 3}


def test_an_error_from_below_exits_with_its_class_status(capsys, monkeypatch):
    def missing(self, name, **kw):
        raise errors.MissingError("images not found: apache/hadoop:3.3.6", lab=name)

    monkeypatch.setattr(Engine, "up", missing)
    code, _, err = run(capsys, "--labs-dir", str(GOOD), "up", "ch91-alpha")
    assert code == 4 and "error: ch91-alpha: images not found: apache/hadoop:3.3.6" in err


def test_a_bug_is_not_exit_1(capsys, monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli.labs, "summaries", broken)
    code, _, err = run(capsys, "list")
    assert code == 3 and "ZeroDivisionError: a bug" in err and "vmdock itself failed" in err


# -- reports when checks cannot run --------------------------------------------------------------

def test_verify_of_a_lab_that_is_not_up_reports_every_check_as_an_error(capsys, tmp_path):
    junit = tmp_path / "reports" / "junit.xml"
    code, out, err = run(capsys, "--labs-dir", str(GOOD), "verify", "ch91-alpha", "--junit", str(junit))
    assert code == 3
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "0", "4")
    for case in suite.findall("testcase"):
        assert "the lab is not up (state: new)" in case.find("error").get("message")
    assert "0 passed, 0 failed, 4 errors (could not run)" in out
    assert "error: ch91-alpha: the lab is not up (state: new)" in err

    code, out, _ = run(capsys, "--labs-dir", str(GOOD), "verify", "ch91-alpha", "--json", "--check", "greeting")
    data = json.loads(out)
    assert code == 3 and (data["passed"], data["failed"], data["errors"]) == (0, 0, 1)
    assert [c["status"] for c in data["checks"]] == ["error"] and "not up" in data["error"]


def test_verify_of_an_unknown_check_is_bad_input_and_writes_nothing(capsys, tmp_path):
    junit = tmp_path / "junit.xml"
    code, _, err = run(
        capsys, "--labs-dir", str(GOOD), "verify", "ch91-alpha", "--check", "nope", "--junit", str(junit)
    )
    assert code == 2 and "ch91-alpha has no check named 'nope'" in err and not junit.exists()


@pytest.mark.parametrize("destroy, destroyed", [("passing", False), ("always", True), ("never", False)])
def test_test_writes_the_report_when_up_fails(capsys, monkeypatch, tmp_path, destroy, destroyed):
    calls = []

    def up_fails(self, name):
        calls.append("up")
        raise errors.ProvisionError("failed at lab.yaml: steps[0].run line 3: exit 1", lab=name, machine="web",
                                    step="91.1 准备")

    monkeypatch.setattr(Engine, "up", up_fails)
    monkeypatch.setattr(Engine, "verify", lambda *a, **k: calls.append("verify"))
    monkeypatch.setattr(Engine, "destroy", lambda self, name: calls.append("destroy") or [])
    junit = tmp_path / "junit.xml"
    code, _, err = run(
        capsys, "--labs-dir", str(GOOD), "test", "ch91-alpha", "--destroy", destroy, "--junit", str(junit)
    )
    assert code == 3
    assert calls == ["up", "destroy"] if destroyed else calls == ["up"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors")) == ("4", "4")
    message = suite.find("testcase/error").get("message")
    assert message.startswith("vmdock up failed: ch91-alpha/web/91.1 准备: failed at lab.yaml: steps[0].run line 3")
    assert ("destroyed" in err) == destroyed


def test_test_refuses_an_unknown_destroy_policy(capsys):
    code, _, err = run(capsys, "--labs-dir", str(GOOD), "test", "ch91-alpha", "--destroy", "sometimes")
    assert code == 2 and "--destroy must be always, passing or never" in err


# -- lab strings are shown, never sent raw ----------------------------------------------------------

def test_visible_shows_control_characters_as_escapes():
    assert cli.visible(HOSTILE) == "evil \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eright-to-left"
    assert cli.visible("a\tb\nc", keep="\n") == "a\\x09b\nc"
    assert cli.visible("中文 ✓ plain") == "中文 ✓ plain"
    assert cli.shown("[bold]x\x1b") == "\\[bold]x\\x1b"


@pytest.mark.parametrize("argv, seen", [
    (["list"], "pwned"),  # in a table the title may wrap anywhere
    (["show", "97"], "evil \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eright-to-left"),
    (["steps", "97"], "## evil \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202eright-to-left   [on manager-one]"),
    (["verify", "97"], "pwned"),
    (["status"], "NETWORK"),
    (["list", "--json"], '"title": "evil \\u001b]0;pwned\\u0007 \\u001b[2J \\u009b31m \\u202eright-to-left"'),
    (["verify", "97", "--json"], '"name": "evil \\u001b]0;pwned\\u0007 \\u001b[2J \\u009b31m \\u202eright-to-left"'),
])
def test_no_command_sends_a_lab_string_raw_to_the_terminal(capsys, hostile_lab, vmdock_home, argv, seen):
    long_lab = hostile_lab
    failed_state(vmdock_home)
    if argv == ["status"]:  # a clean lab file: the hostile text comes from the state (an error's output)
        (long_lab / "ch97-quite-a-long-lab-name" / "lab.yaml").write_text(
            LONG_LAB.format(title=json.dumps("plain")), encoding="utf-8")
        failed_state(vmdock_home, message=f"failed: {HOSTILE}: NETWORK: unbound variable")
    code, out, err = run(capsys, "--labs-dir", str(long_lab), *argv)
    for text in (out, err):
        assert not any(ch in text for ch in "\x1b\x07\x9b\u202e"), repr(text)
    if argv == ["status"]:  # strings from the state file, not from the lab file
        assert code in (0, 3) and seen in out, err
        return
    # the loader refuses control characters in a lab's text; the refusal itself shows them escaped
    assert code == 2 and "must not contain '\\x1b'" in out + err, out + err


# -- tables at 80 columns -----------------------------------------------------------------------------

def vmdock80(labs: Path, home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VMDOCK_LABS"}
    env.update(COLUMNS="80", VMDOCK_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "vmdock", "--labs-dir", str(labs), *argv],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("argv", [["list"], ["status"], ["verify", "97"]])
def test_tables_fit_80_columns_and_never_split_a_name(long_lab, vmdock_home, argv):
    failed_state(vmdock_home)
    proc = vmdock80(long_lab, vmdock_home, *argv)
    assert proc.returncode in (0, 3), proc.stderr
    table = [line for line in proc.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert table, proc.stdout
    assert max(cell_len(line) for line in table) <= 80, proc.stdout
    names = {"list": ["ch97-quite-a-long-lab-name", "manager-one", "worker-three"],
             "status": ["ch97-quite-a-long-lab-name", "worker-three │ not_created", "manager-one  │ unknown"],
             "verify": ["worker-three"]}[argv[0]]
    for name in names:
        assert any(name in line for line in table), (name, proc.stdout)


def test_status_names_machine_step_and_command_of_the_last_error(long_lab, vmdock_home):
    failed_state(vmdock_home)
    out = vmdock80(long_lab, vmdock_home, "status").stdout
    below = out.split("└")[1].split("\n", 1)[1]
    assert below == (
        "ch97-quite-a-long-lab-name:\n"
        "  ssh manager-one: vagrant@127.0.0.1:2222\n"
        "  ssh worker-two: vagrant@127.0.0.1:2222\n"
        "  last good step: -\n"
        "  last error: worker-two / 1 join the swarm: failed at labs/ch97/lab.yaml: steps[0].run line 3: "
        "NETWORK: unbound variable\n"
        "    command: [step1] docker swarm join (exit 1)\n")


def test_test_interrupted_still_writes_the_report_and_keeps_the_machines(capsys, monkeypatch, tmp_path):
    calls = []

    def interrupted(self, name):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "up", interrupted)
    monkeypatch.setattr(Engine, "destroy", lambda *a, **k: calls.append("destroy") or [])
    junit = tmp_path / "junit.xml"
    code, _, _ = run(
        capsys, "--labs-dir", str(GOOD), "test", "ch91-alpha", "--destroy", "always", "--junit", str(junit)
    )
    assert code == 130 and calls == []
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "4"
    assert suite.find("testcase/error").get("message") == "interrupted (Ctrl-C) during vmdock up"


# -- vmdock ssh LAB -- CMD ------------------------------------------------------------------------

@pytest.mark.parametrize("argv, args, command", [
    (["ssh", "lab", "--", "docker", "ps"], ["ssh", "lab"], ["docker", "ps"]),
    (["ssh", "lab", "m", "--", "sh", "-c", "exit 7"], ["ssh", "lab", "m"], ["sh", "-c", "exit 7"]),
    (["-v", "--labs-dir", "ssh", "ssh", "lab", "--"], ["-v", "--labs-dir", "ssh", "ssh", "lab"], []),
    (["ssh", "lab"], ["ssh", "lab"], None),
    (["show", "ssh", "--", "x"], ["show", "ssh", "--", "x"], None),  # another command keeps its `--`
])
def test_the_words_after_double_dash_are_the_remote_command(argv, args, command):
    assert cli._split_remote_command(argv) == (args, command)


def test_ssh_with_nothing_after_double_dash_is_bad_input(capsys, vmdock_home):
    LabState(path=vmdock_home / "labs" / "ch91-alpha" / "state.json", lab="ch91-alpha", phase="provisioned",
             machines={"web": {"id": "x", "ssh": {"host": "127.0.0.1", "port": 2222, "user": "vagrant",
                                                  "identity_files": []}}}).save()
    code, _, err = run(capsys, "--labs-dir", str(GOOD), "ssh", "ch91-alpha", "--")
    assert code == 2 and "nothing after `--`" in err


def test_extra_words_without_double_dash_are_refused(capsys):
    code, _, err = run(capsys, "--labs-dir", str(GOOD), "ssh", "ch91-alpha", "web", "docker")
    assert code == 2 and "unexpected extra argument" in err.lower()
