"""Hostile lab folders: the real CLI answers early, in bounded time and memory.

A teacher's labs folder is input vmdock does not control.  Each case writes one
lab folder and runs ``python -m vmdock --labs-dir … show NAME`` (or ``list``,
``render``) in a subprocess with an address-space cap, and asserts one clean
error line naming lab.yaml and the field, exit status 2, no traceback, an
answer within CPU_LIMIT seconds of CPU time (wall time varies with the load of a
shared machine; WALL_LIMIT only stops a runaway) and a peak resident size under
RSS_LIMIT.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("vmdock_home", "no_shipped_labs")

CPU_LIMIT = 5.0  # seconds of CPU; `show` of a good lab takes about 0.3 s, mostly start-up
WALL_LIMIT = 60.0  # seconds; a subprocess still running then is killed and the test fails
RSS_LIMIT = 200 * 2**20  # peak resident bytes
ADDRESS_SPACE = 1 << 30  # hard cap: a regression fails with MemoryError instead of eating the machine
PRLIMIT = shutil.which("prlimit") or "prlimit"  # util-linux
HEAD = "chapter: 5\ntitle: T\n"
MACHINE = "machines: [{name: web}]\n"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float  # wall
    cpu: float  # user + system
    max_rss: int  # bytes


def vmdock(cwd: Path, *args: str) -> Run:
    """The real CLI in a subprocess."""
    return run_capped(cwd, sys.executable, "-m", "vmdock", *args)


def run_capped(cwd: Path, *argv: str) -> Run:
    """A command under the address-space cap; its own peak RSS comes from wait4()."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    start = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        # prlimit execs vmdock in its own process: wait4() below reports vmdock's peak
        proc = subprocess.Popen([PRLIMIT, f"--as={ADDRESS_SPACE}", *argv], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > WALL_LIMIT:
            proc.kill()
            os.wait4(proc.pid, 0)
            pytest.fail(f"{' '.join(argv)} still running after {WALL_LIMIT:.0f} s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(proc.returncode, out.read_text("utf-8", "replace"), err.read_text("utf-8", "replace"),
               time.monotonic() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def refused(labs: Path, name: str, *, command: str = "show") -> str:
    """Run ``vmdock … COMMAND NAME`` on a broken lab; assert a clean, bounded refusal; return the error text."""
    run = vmdock(labs.parent, "--labs-dir", labs.name, command, name)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.code == 2, (run.code, run.stderr[-2000:])
    err = run.stderr.lstrip("\n")  # `render` ends its (empty) progress display first
    assert err.startswith(f"error: labs/{name}/lab.yaml"), err[:2000]
    assert run.cpu < CPU_LIMIT, f"{run.cpu:.1f} s of CPU ({run.seconds:.1f} s wall)"
    assert run.max_rss < RSS_LIMIT, f"{run.max_rss / 2**20:.0f} MiB"
    return err


def first_line(labs: Path, name: str, **kw) -> str:
    return refused(labs, name, **kw).splitlines()[0]


@pytest.fixture
def labs(tmp_path) -> Path:
    root = tmp_path / "labs"
    root.mkdir()
    return root


def lab_folder(labs: Path, name: str) -> Path:
    d = labs / name
    d.mkdir()
    return d


def write_lab(labs: Path, name: str, body: str) -> Path:
    d = lab_folder(labs, name)
    (d / "lab.yaml").write_text(f"name: {name}\n{body}", encoding="utf-8")
    return d


def machines(*entries: str) -> str:
    return "machines:\n" + "".join(f"  - {e}\n" for e in entries)


def test_the_harness_measures_memory_and_cpu_and_caps_memory(tmp_path):
    grow = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    run = run_capped(tmp_path, sys.executable, "-c", grow)
    assert run.code == 0 and run.max_rss > RSS_LIMIT
    spin = "import time; end = time.process_time() + 1\nwhile time.process_time() < end: pass"
    assert run_capped(tmp_path, sys.executable, "-c", spin).cpu >= 1.0
    run = run_capped(tmp_path, sys.executable, "-c", "bytearray(2 * 2**30)")
    assert run.code == 1 and "MemoryError" in run.stderr


# -- size, depth, nodes, aliases: refused before the YAML gets far -------------------------

def test_deep_nesting(labs):
    (lab_folder(labs, "ch5-deep") / "lab.yaml").write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert first_line(labs, "ch5-deep") == "error: labs/ch5-deep/lab.yaml:1:70: name: nested more than 64 levels deep"


def test_deep_nesting_of_mappings(labs):
    text = "".join("  " * i + f"k{i}:\n" for i in range(200))
    (lab_folder(labs, "ch5-deepmap") / "lab.yaml").write_text(text)
    assert first_line(labs, "ch5-deepmap") == (
        "error: labs/ch5-deepmap/lab.yaml:64:127: k0: nested more than 64 levels deep"
    )


def test_ten_megabytes_of_unknown_keys(labs):
    text = "".join(f"unknown_key_number_{i:06d}: 1\n" for i in range(400_000))
    (lab_folder(labs, "ch5-huge") / "lab.yaml").write_text(text)
    assert first_line(labs, "ch5-huge") == "error: labs/ch5-huge/lab.yaml: 11.1 MiB is too large (at most 1 MiB)"


def test_many_errors_are_cut_at_fifty(labs):
    write_lab(labs, "ch5-errors", HEAD + MACHINE + "".join(f"unknown_{i}: 1\n" for i in range(9_000)))
    lines = refused(labs, "ch5-errors").splitlines()
    assert lines[0] == "error: labs/ch5-errors/lab.yaml: unknown_0: unknown key"
    assert lines[49] == "  labs/ch5-errors/lab.yaml: unknown_49: unknown key"
    assert lines[50:] == ["  labs/ch5-errors/lab.yaml: and 8950 more errors"]


def test_too_many_nodes(labs):
    write_lab(labs, "ch5-nodes", HEAD + "sections: [" + ", ".join(["s"] * 300_000) + "]\n")
    assert first_line(labs, "ch5-nodes") == (
        "error: labs/ch5-nodes/lab.yaml:4:59985: sections: more than 20000 YAML nodes"
    )


def test_billion_laughs(labs):
    lines = [HEAD + MACHINE + "lol0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    write_lab(labs, "ch5-laughs", "\n".join(lines) + "\n")
    assert first_line(labs, "ch5-laughs") == (
        "error: labs/ch5-laughs/lab.yaml:9:12: lol4: more than 20000 YAML nodes once aliases are expanded"
    )


def test_aliases_deepen_nesting(labs):
    nest = "[" * 40 + "x" + "]" * 40
    write_lab(labs, "ch5-aliasdeep", HEAD + MACHINE + f"a: &a {nest}\nb: &b {'[' * 40}*a{']' * 40}\n")
    assert first_line(labs, "ch5-aliasdeep") == (
        "error: labs/ch5-aliasdeep/lab.yaml:6:47: b: nested more than 64 levels deep once aliases are expanded"
    )


def test_alias_inside_itself(labs):
    write_lab(labs, "ch5-cycle", HEAD + MACHINE + "sections: &s [a, *s]\n")
    assert first_line(labs, "ch5-cycle") == (
        "error: labs/ch5-cycle/lab.yaml:5:18: sections: alias *s refers to a node that contains it"
    )


def test_a_few_aliases_are_fine(labs):
    write_lab(labs, "ch5-anchors", HEAD + "sections: &s [a, b]\n"
              "machines: [{name: web, box: &box debian12}, {name: db, box: *box}]\n")
    run = vmdock(labs.parent, "--labs-dir", "labs", "show", "ch5-anchors")
    assert run.code == 0, run.stderr
    assert "web: debian12" in run.stdout and "db: debian12" in run.stdout


# -- the schema: counts, lengths, boxes, addresses, ports ------------------------------------

def test_ten_thousand_machines(labs):
    write_lab(labs, "ch5-many", HEAD + machines(*[f"{{name: m{i}x}}" for i in range(10_000)]))
    assert first_line(labs, "ch5-many") == "error: labs/ch5-many/lab.yaml:6668:12: machines: more than 20000 YAML nodes"


@pytest.mark.parametrize("command", ["show", "render", "list"])
def test_fourteen_machines(labs, command):
    write_lab(labs, "ch5-fourteen", HEAD + machines(*[f"{{name: m{i}x}}" for i in range(14)]))
    if command == "list":
        run = vmdock(labs.parent, "--labs-dir", "labs", "list")
        assert run.code == 2 and "Traceback" not in run.stderr
        line = "broken lab labs/ch5-fourteen/lab.yaml: machines: at most 13 machines fit a lab's network, not 14"
        assert line in run.stderr
        return
    assert first_line(labs, "ch5-fourteen", command=command) == (
        "error: labs/ch5-fourteen/lab.yaml: machines: at most 13 machines fit a lab's network, not 14"
    )


def test_huge_step_count(labs):
    steps = "steps:\n" + "".join(f"  - {{name: s{i}, run: 'true'}}\n" for i in range(600))
    write_lab(labs, "ch5-steps", HEAD + MACHINE + steps)
    assert first_line(labs, "ch5-steps") == "error: labs/ch5-steps/lab.yaml: steps: at most 500 items, not 600"


def test_five_megabyte_description(labs):
    write_lab(labs, "ch5-desc", HEAD + MACHINE + "description: " + "x" * (5 * 2**20) + "\n")
    assert first_line(labs, "ch5-desc", command="render") == (
        "error: labs/ch5-desc/lab.yaml: 5.0 MiB is too large (at most 1 MiB)"
    )


@pytest.mark.parametrize("command", ["show", "render"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("description", "x" * 30_000, "description: String should have at most 20000 characters"),
        ("title", "t" * 500, "title: String should have at most 200 characters"),
    ],
)
def test_long_strings(labs, command, field, value, message):
    body = "chapter: 5\n" + ("" if field == "title" else "title: T\n") + f"{field}: {value}\n" + MACHINE
    write_lab(labs, "ch5-long", body)
    assert first_line(labs, "ch5-long", command=command) == f"error: labs/ch5-long/lab.yaml: {message}"


def test_long_run_script(labs):
    write_lab(labs, "ch5-script", HEAD + MACHINE + f"steps: [{{name: s, run: '{'x' * 150_000}'}}]\n")
    assert first_line(labs, "ch5-script") == (
        "error: labs/ch5-script/lab.yaml: steps[0].run: String should have at most 100000 characters"
    )


@pytest.mark.parametrize("command", ["show", "render", "up"])
def test_box_outside_the_catalog(labs, command, vmdock_home):
    write_lab(labs, "ch5-box", HEAD + machines("{name: web, box: ../../../../etc/passwd}"))
    assert first_line(labs, "ch5-box", command=command) == (
        "error: labs/ch5-box/lab.yaml: machines[0].box: unknown box '../../../../etc/passwd' "
        "(boxes: debian12, ubuntu2204, ubuntu2404)"
    )
    assert not (vmdock_home / "labs" / "ch5-box").exists()  # nothing half-written


@pytest.mark.parametrize("command", ["show", "render"])
@pytest.mark.parametrize(
    ("host_ip", "shown"),
    [
        ("not-an-address", "'not-an-address'"),
        ('"127.0.0.1\\nsystem(\\"touch /tmp/pwned\\")"', "'127.0.0.1\\nsystem(\"touch /tmp/pwned\")'"),
        ('"fe80::1%\\nx"', "'fe80::1%\\nx'"),
        ("127.0.0.01", "'127.0.0.01'"),
    ],
)
def test_host_ip_must_be_an_address(labs, command, host_ip, shown):
    port = f"{{guest: 80, host: 8080, host_ip: {host_ip}}}"
    write_lab(labs, "ch5-ip", HEAD + machines(f"{{name: web, forwarded_ports: [{port}]}}"))
    assert first_line(labs, "ch5-ip", command=command) == (
        f"error: labs/ch5-ip/lab.yaml: machines[0].forwarded_ports[0].host_ip: {shown} is not an IP address "
        "(e.g. 127.0.0.1, or 0.0.0.0 for every address)"
    )


@pytest.mark.parametrize("command", ["show", "render", "up"])
def test_one_host_port_forwarded_by_two_machines(labs, command, vmdock_home):
    write_lab(labs, "ch5-ports", HEAD + machines(
        "{name: web, forwarded_ports: [{guest: 80, host: 18081}]}",
        "{name: db, forwarded_ports: [{guest: 8080, host: 18081}]}",
    ))
    assert first_line(labs, "ch5-ports", command=command) == (
        "error: labs/ch5-ports/lab.yaml: machines[1].forwarded_ports[0].host: "
        "host port 18081/tcp is already forwarded by machines[0].forwarded_ports[0] (web)"
    )
    assert not (vmdock_home / "labs" / "ch5-ports").exists()  # nothing half-written


def test_every_address_clashes_with_one_address(labs):
    write_lab(labs, "ch5-any", HEAD + machines(
        "{name: web, forwarded_ports: [{guest: 80, host: 18081, host_ip: 127.0.0.1}]}",
        "{name: db, forwarded_ports: [{guest: 80, host: 18081, host_ip: 0.0.0.0}]}",
    ))
    assert first_line(labs, "ch5-any") == (
        "error: labs/ch5-any/lab.yaml: machines[1].forwarded_ports[0].host: "
        "host port 18081/tcp is already forwarded by machines[0].forwarded_ports[0] (web)"
    )


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("{guest: 0, host: 8080}", "guest: Input should be greater than or equal to 1"),
        ("{guest: 70000, host: 8080}", "guest: Input should be less than or equal to 65535"),
        ("{guest: true, host: 8080}", "guest: Input should be a valid integer"),
        ("{guest: '80', host: 8080}", "guest: Input should be a valid integer"),
    ],
)
def test_guest_ports(labs, port, message):
    write_lab(labs, "ch5-guest", HEAD + machines(f"{{name: web, forwarded_ports: [{port}]}}"))
    assert first_line(labs, "ch5-guest") == f"error: labs/ch5-guest/lab.yaml: machines[0].forwarded_ports[0].{message}"


def test_one_guest_port_forwarded_twice_on_a_machine(labs):
    ports = "[{guest: 80, host: 8080}, {guest: 80, host: 8081}]"
    write_lab(labs, "ch5-guest2", HEAD + machines(f"{{name: web, forwarded_ports: {ports}}}"))
    assert first_line(labs, "ch5-guest2") == (
        "error: labs/ch5-guest2/lab.yaml: machines[0].forwarded_ports[1].guest: "
        "guest port 80/tcp is already forwarded by machines[0].forwarded_ports[0] (web)"
    )


# -- text: control characters, invalid UTF-8 -------------------------------------------------

@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('title: "\\e[2J\\e[31mpwned"', "title: one line of text must not contain '\\x1b' (character 1)"),
        ('title: "two\\nlines"', "title: one line of text must not contain '\\n' (character 4)"),
        ('title: "T"\nsections: ["a\\u202eb"]',
         "sections[0]: one line of text must not contain '\\u202e' (character 2)"),
        ('title: "T"\ndescription: "x\\ud800"',
         "description: Input should be a valid string, unable to parse raw data as a unicode string"),
        ('title: "T"\ndescription: "bell\\a"', "description: text must not contain '\\x07' (character 5)"),
    ],
)
def test_control_characters(labs, line, message):
    write_lab(labs, "ch5-ctrl", f"chapter: 5\n{line}\n{MACHINE}")
    assert first_line(labs, "ch5-ctrl") == f"error: labs/ch5-ctrl/lab.yaml: {message}"


def test_unknown_key_with_control_characters_is_quoted(labs):
    write_lab(labs, "ch5-key", HEAD + MACHINE + '"\\e[2Jevil": 1\n')
    assert first_line(labs, "ch5-key") == "error: labs/ch5-key/lab.yaml: '\\x1b[2Jevil': unknown key"


def test_invalid_utf8(labs):
    (lab_folder(labs, "ch5-bytes") / "lab.yaml").write_bytes(b"name: ch5-bytes\ntitle: \xff\xfe\n")
    assert first_line(labs, "ch5-bytes") == "error: labs/ch5-bytes/lab.yaml:2:8: not UTF-8 text (byte 0xff)"


def test_raw_control_character_in_the_file(labs):
    (lab_folder(labs, "ch5-raw") / "lab.yaml").write_bytes(b"name: ch5-raw\ntitle: \x1b[2J\n")
    assert first_line(labs, "ch5-raw") == (
        "error: labs/ch5-raw/lab.yaml:2:8: invalid YAML: character '\\x1b' is not allowed"
    )


# -- what lab.yaml is: a directory, a device, a FIFO, a link out of the folder ----------------

def test_lab_yaml_is_a_directory(labs):
    (lab_folder(labs, "ch5-dir") / "lab.yaml").mkdir()
    assert first_line(labs, "ch5-dir") == "error: labs/ch5-dir/lab.yaml: is a directory, not a file"


def test_lab_yaml_links_to_dev_zero(labs):
    (lab_folder(labs, "ch5-zero") / "lab.yaml").symlink_to("/dev/zero")
    assert first_line(labs, "ch5-zero") == "error: labs/ch5-zero/lab.yaml: is a link to a file outside the lab folder"


def test_lab_yaml_links_outside_the_lab_folder(labs, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    (lab_folder(labs, "ch5-shadow") / "lab.yaml").symlink_to(secret)
    err = refused(labs, "ch5-shadow")
    assert err.splitlines()[0] == "error: labs/ch5-shadow/lab.yaml: is a link to a file outside the lab folder"
    assert "secret" not in err and str(tmp_path) not in err


def test_lab_yaml_may_link_inside_its_folder(labs):
    d = write_lab(labs, "ch5-inside", HEAD + MACHINE)
    (d / "lab.yaml").rename(d / "real.yaml")
    (d / "lab.yaml").symlink_to("real.yaml")
    run = vmdock(labs.parent, "--labs-dir", "labs", "show", "ch5-inside")
    assert run.code == 0, run.stderr


def test_lab_yaml_is_a_fifo(labs):
    os.mkfifo(lab_folder(labs, "ch5-fifo") / "lab.yaml")
    assert first_line(labs, "ch5-fifo") == "error: labs/ch5-fifo/lab.yaml: is not a regular file"


def test_lab_yaml_is_a_symlink_loop(labs):
    (lab_folder(labs, "ch5-loop") / "lab.yaml").symlink_to("lab.yaml")
    assert first_line(labs, "ch5-loop") == (
        "error: labs/ch5-loop/lab.yaml: cannot read: Too many levels of symbolic links"
    )


def test_lab_yaml_is_a_dangling_link(labs):
    (lab_folder(labs, "ch5-dangling") / "lab.yaml").symlink_to("nowhere.yaml")
    assert first_line(labs, "ch5-dangling") == "error: labs/ch5-dangling/lab.yaml: no such file"


def test_step_file_is_a_symlink_loop(labs):
    d = write_lab(labs, "ch5-fileloop", HEAD + MACHINE + "steps: [{name: s, run: 'true', files: [x.sh]}]\n")
    (d / "x.sh").symlink_to("x.sh")
    assert first_line(labs, "ch5-fileloop").startswith(
        "error: labs/ch5-fileloop/lab.yaml: steps[0].files[0]: 'x.sh' does not exist in "
    )


def test_list_reports_every_kind_of_broken_file(labs):
    (lab_folder(labs, "ch5-dir") / "lab.yaml").mkdir()
    os.mkfifo(lab_folder(labs, "ch5-fifo") / "lab.yaml")
    (lab_folder(labs, "ch5-zero") / "lab.yaml").symlink_to("/dev/zero")
    run = vmdock(labs.parent, "--labs-dir", "labs", "list")
    assert run.code == 2 and "Traceback" not in run.stderr
    assert run.cpu < CPU_LIMIT and run.max_rss < RSS_LIMIT
    for line in ("broken lab labs/ch5-dir/lab.yaml: is a directory, not a file",
                 "broken lab labs/ch5-fifo/lab.yaml: is not a regular file",
                 "broken lab labs/ch5-zero/lab.yaml: is a link to a file outside the lab folder"):
        assert line in run.stderr


# -- YAML that is not plain data: keys, duplicates, tags, numbers, dates --------------------

@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1: x", "3:1: invalid YAML: key 1 is not a string (quote it)"),
        ("null: x", "3:1: invalid YAML: key None is not a string (quote it)"),
        ("? [a, b]\n: x", "3:3: invalid YAML: a sequence as a key is not allowed"),
        ("title: again", "3:1: invalid YAML: duplicate key 'title'"),
        ("x: !!python/object/apply:os.system [touch /tmp/pwned]",
         "3:4: invalid YAML: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'"),
        ("x: " + "9" * 5000, "3:4: invalid YAML: number 99999999999999999999… is longer than 64 characters"),
        ("x: " + ":".join(["1"] * 50_000),
         "3:4: invalid YAML: number 1:1:1:1:1:1:1:1:1:1:… is longer than 64 characters"),
        ("x: 2026-13-45", "3:4: invalid YAML: '2026-13-45': month must be in 1..12"),
    ],
)
def test_yaml_that_is_not_plain_data(labs, line, message):
    write_lab(labs, "ch5-yaml", f"title: T\n{line}\nchapter: 5\n{MACHINE}")
    assert first_line(labs, "ch5-yaml") == f"error: labs/ch5-yaml/lab.yaml:{message}"


# -- printing lab strings -------------------------------------------------------------------

def test_cli_sanitising_of_a_folder_name_with_control_characters(labs):
    """A lab folder's name is the teacher's filesystem: `vmdock list` must not write its ESC to the terminal."""
    (lab_folder(labs, "ch5-\x1b[2Jevil") / "lab.yaml").write_text("name: ch5-evil\n" + HEAD + MACHINE)
    run = vmdock(labs.parent, "--labs-dir", "labs", "list")
    assert run.code == 2 and "Traceback" not in run.stderr
    assert "ch5-" in run.stderr
    assert "\x1b" not in run.stdout + run.stderr
