"""How a script runs in a machine, without the machine: the real shell line of
``transport.script_command`` run by the local bash, line mapping, and masking.
"""
from __future__ import annotations

import subprocess

import pytest

from vmdock.errors import CommandError
from vmdock.runlog import Log, run
from vmdock.transport import failed_line, map_lines, script_command

ORIGIN = "labs/x/lab.yaml: steps[2].run"


def run_here(tmp_path, body: str, prelude: str, trap: bool = True) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``body`` the way a machine does, with bash here instead of `sudo -n bash` there."""
    script = tmp_path / "step3.sh"
    script.write_text(body)
    line = script_command(str(script), trap=trap)
    assert line.startswith("sudo -n bash -c ")
    proc = subprocess.run(["bash", "-c", line.removeprefix("sudo -n ")], input=prelude, capture_output=True, text=True,
                          timeout=30, check=False)
    return proc, str(script)


def test_the_environment_comes_on_stdin_and_the_script_is_removed(tmp_path):
    proc, script = run_here(tmp_path, 'echo "$TOKEN in $PWD"\n', f"export TOKEN='a b$c'\ncd {tmp_path}\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"a b$c in {tmp_path}\n"
    assert not (tmp_path / "step3.sh").exists()


def test_errors_name_the_scripts_own_lines(tmp_path):
    proc, script = run_here(tmp_path, "echo one\necho two\necho \"$NETWORK\"\n", "")
    assert proc.returncode == 1
    assert proc.stderr == f"{script}: line 3: NETWORK: unbound variable\n"
    assert map_lines(proc.stderr, script, ORIGIN) == f"{ORIGIN} line 3: NETWORK: unbound variable\n"

    proc, script = run_here(tmp_path, "true\n\nfalse\necho never\n", "")
    assert (proc.returncode, proc.stdout) == (1, "")
    mapped = map_lines(proc.stderr, script, ORIGIN)
    assert mapped == f"{ORIGIN} line 3: exit 1\n"
    assert failed_line(mapped, ORIGIN) == f"{ORIGIN} line 3: exit 1"


def test_exit_status_and_pipefail_hold_and_the_file_goes_whatever_happens(tmp_path):
    proc, _ = run_here(tmp_path, "exit 7\n", "")
    assert proc.returncode == 7 and not (tmp_path / "step3.sh").exists()
    proc, _ = run_here(tmp_path, "false | true\necho after\n", "")
    assert proc.returncode == 1 and proc.stdout == ""
    proc, _ = run_here(tmp_path, "exit 3\n", "", trap=False)
    assert proc.returncode == 3 and proc.stderr == ""  # checks run without the trap: their stderr is theirs


def test_failed_line_is_none_without_a_mapped_line():
    assert failed_line("some error\n", ORIGIN) is None


def test_log_masks_secrets_everywhere(tmp_path):
    log = Log(tmp_path / "vmdock.log")
    log.add_secrets(["short", "ab", "the-long-secret", "the-long"])
    log.write("a the-long-secret and short and ab")
    assert log.path.read_text() == "a *** and *** and ab\n"  # longest first; under 4 characters is not masked
    assert log.mask("the-long-secret the-long") == "*** ***"


def test_host_commands_mask_their_output_on_lines_and_in_errors(tmp_path):
    log = Log(tmp_path / "vmdock.log")
    log.add_secrets(["hunter22"])
    lines: list[str] = []
    with pytest.raises(CommandError) as caught:
        run(["sh", "-c", "echo pw=hunter22; echo bad hunter22 >&2; exit 2", "hunter22"], log, on_line=lines.append)
    assert "hunter22" not in log.path.read_text()
    assert sorted(lines) == ["bad ***", "pw=***"]  # stdout and stderr are read side by side
    assert "hunter22" not in caught.value.stderr_tail and "hunter22" not in (caught.value.command or "")
