"""The judges of each check kind, and the JUnit report.

Each check kind is a (script, judge) pair.  The judges are tested on made-up
outputs, and the pairs for real: the script runs here under bash against a
local HTTP server or socket (nothing leaves 127.0.0.1), and its real output is
judged.  Every failing verdict must say what was expected and what was seen.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmdock import verify
from vmdock.errors import CommandError, UnreachableError
from vmdock.model import CommandCheck, ContainerCheck, HttpCheck, Lab, PortCheck
from vmdock.runlog import Log
from vmdock.verify import CheckResult, errored, junit_xml, run_check, run_checks

MARK = verify._HTTP_MARK


def command(**kw) -> CommandCheck:
    return CommandCheck(type="command", name=kw.pop("name", "c"), run=kw.pop("run", "true"), **kw)


def http(**kw) -> HttpCheck:
    return HttpCheck(type="http", name="h", url=kw.pop("url", "http://127.0.0.1/"), **kw)


def judge_of(check):
    return verify._KINDS[check.type](check)[1]


def run_here(check, timeout=30) -> tuple[bool, str, str]:
    """Run the check's script with bash on this host and judge its real output."""
    script, judge = verify._KINDS[check.type](check)
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout)
    return judge(res.returncode, res.stdout, res.stderr)


# -- command ------------------------------------------------------------------------

def test_command_passes():
    check = command(contains=["hello", "world"], matches=r"^true$")
    ok, expected, seen = judge_of(check)(0, "hello world\ntrue\n", "")
    assert ok
    assert expected == "exit 0, stdout contains 'hello', stdout contains 'world', stdout matches /^true$/"
    assert seen == "exit 0"


def test_command_wrong_exit_code_shows_the_code_stdout_and_stderr():
    ok, expected, seen = judge_of(command())(3, "partial output\n", "bash: foo: command not found\n")
    assert not ok
    assert expected == "exit 0"
    assert seen == "exit 3; stdout: 'partial output'; stderr: 'bash: foo: command not found'"


def test_command_expected_nonzero_exit():
    ok, expected, seen = judge_of(command(exit_code=1))(1, "", "")
    assert ok and expected == "exit 1" and seen == "exit 1"
    ok, _, seen = judge_of(command(exit_code=1))(0, "", "")
    assert not ok and seen.startswith("exit 0;")


def test_command_missing_text_and_no_match():
    check = command(contains="nginx: worker process", matches=r"host port \d+")
    ok, expected, seen = judge_of(check)(0, "nginx: master process\nhost port none\n", "")
    assert not ok
    assert "stdout contains 'nginx: worker process'" in expected
    assert "stdout matches /host port \\d+/" in expected
    assert seen.startswith("missing 'nginx: worker process'; no match for /host port \\d+/; stdout: ")
    assert "nginx: master process" in seen
    assert "stderr" not in seen  # empty stderr is not shown


def test_command_regex_is_multiline():
    ok, _, _ = judge_of(command(matches="^true$"))(0, "running=\ntrue\n", "")
    assert ok


def test_command_long_output_is_clipped():
    ok, _, seen = judge_of(command(contains="needle"))(0, "x" * 10000, "")
    assert not ok
    assert "(10000 chars)" in seen and len(seen) < 600


def test_command_script_is_the_run_text():
    assert verify._command(command(run="docker ps\n"))[0] == "docker ps\n"


def test_command_for_real():
    check = command(run="printf 'a\\ntrue\\n'; echo oops >&2; exit 4", contains=["a"], matches="^true$")
    ok, _, seen = run_here(check)
    assert not ok and seen == "exit 4; stdout: 'a\\ntrue'; stderr: 'oops'"
    assert run_here(command(run="echo ok", contains="ok"))[0]


# -- http ---------------------------------------------------------------------------

def test_http_passes():
    ok, expected, seen = judge_of(http(contains=["VMDOCK"]))(0, f"<h1>VMDOCK</h1>\n{MARK}200", "")
    assert ok and expected == "HTTP 200, body contains 'VMDOCK'" and seen == "HTTP 200"


def test_http_status_mismatch_shows_status_and_body():
    ok, expected, seen = judge_of(http())(0, f"<h1>Not Found</h1>\n{MARK}404", "")
    assert not ok
    assert expected == "HTTP 200"
    assert seen == "HTTP 404; body: '<h1>Not Found</h1>'"


def test_http_body_missing_text():
    ok, expected, seen = judge_of(http(contains=["VMDOCK-PAGE", "Welcome"]))(0, f"Welcome to nginx!\n{MARK}200", "")
    assert not ok
    assert expected == "HTTP 200, body contains 'VMDOCK-PAGE', body contains 'Welcome'"
    assert seen == "body lacks 'VMDOCK-PAGE'; body: 'Welcome to nginx!'"


def test_http_status_and_body_both_wrong():
    ok, _, seen = judge_of(http(status=201, contains="created"))(0, f"oops\n{MARK}500", "")
    assert not ok and seen.startswith("HTTP 500; body lacks 'created'; body: 'oops'")


@pytest.mark.parametrize("code,out,err,shown", [
    (7, f"\n{MARK}000", "curl: (7) Failed to connect to 127.0.0.1 port 80: Connection refused\n",
     "curl: (7) Failed to connect to 127.0.0.1 port 80: Connection refused"),
    (28, f"\n{MARK}000", "", "curl exit 28"),
    (0, f"\n{MARK}000", "", "curl exit 0"),
    (127, "", "bash: curl: command not found", "bash: curl: command not found"),
])
def test_http_no_answer(code, out, err, shown):
    ok, expected, seen = judge_of(http(url="http://127.0.0.1/x"))(code, out, err)
    assert not ok and expected == "HTTP 200"
    assert seen == f"no answer from http://127.0.0.1/x: {shown}"


def test_http_marker_in_the_body_does_not_confuse_the_status():
    ok, _, _ = judge_of(http(contains="x"))(0, f"x {MARK}404 x\n{MARK}200", "")
    assert ok


def test_http_other_expected_status():
    assert judge_of(http(status=302))(0, f"\n{MARK}302", "")[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx and Apache do

    def _send(self, status, body: bytes, head_only=False):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/":
            self._send(200, "VMDOCK page 中文\n".encode())
        else:
            self._send(404, b"not found\n")

    def do_HEAD(self):
        self._send(200 if self.path == "/" else 404, "VMDOCK page 中文\n".encode(), head_only=True)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(n)
        self._send(201, b"got " + data + b" as " + self.headers.get("X-Lab", "").encode())

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")


@needs_curl
def test_http_for_real(server):
    assert run_here(http(url=server + "/", contains="VMDOCK page 中文")) == (
        True, "HTTP 200, body contains 'VMDOCK page 中文'", "HTTP 200")
    ok, _, seen = run_here(http(url=server + "/nope"))
    assert not ok and seen == "HTTP 404; body: 'not found'"
    ok, _, seen = run_here(http(url=server + "/", contains="Welcome"))
    assert not ok and seen == "body lacks 'Welcome'; body: 'VMDOCK page 中文'"


@needs_curl
def test_http_post_with_headers_and_body_for_real(server):
    check = http(url=server + "/echo", method="POST", status=201, body="a 'quoted' $body",
                 headers={"X-Lab": "ch6 lamp"}, contains="got a 'quoted' $body as ch6 lamp")
    assert run_here(check)[0]


@needs_curl
def test_http_head_for_real(server):
    ok, expected, seen = run_here(http(url=server + "/", method="HEAD", timeout=5), timeout=30)
    assert (ok, seen) == (True, "HTTP 200"), seen
    ok, _, seen = run_here(http(url=server + "/nope", method="HEAD", timeout=5), timeout=30)
    assert not ok and seen.startswith("HTTP 404")


@needs_curl
def test_http_no_answer_for_real():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    ok, expected, seen = run_here(http(url=f"http://127.0.0.1:{port}/", timeout=5))
    assert not ok and expected == "HTTP 200"
    assert seen.startswith(f"no answer from http://127.0.0.1:{port}/: curl: (7) ")


# -- port ---------------------------------------------------------------------------

@pytest.mark.parametrize("want_open,out,ok,seen", [
    (True, "open\n", True, "127.0.0.1:3306 open"),
    (True, "bash: connect: Connection refused\nclosed\n", False, "127.0.0.1:3306 closed"),
    (True, "", False, "127.0.0.1:3306 closed"),
    (False, "closed\n", True, "127.0.0.1:3306 closed"),
    (False, "open\n", False, "127.0.0.1:3306 open"),
])
def test_port(want_open, out, ok, seen):
    check = PortCheck(type="port", name="p", port=3306, open=want_open)
    got = judge_of(check)(0, out, "")
    assert got == (ok, f"127.0.0.1:3306 {'open' if want_open else 'closed'}", seen)


def test_port_for_real():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        assert run_here(PortCheck(type="port", name="p", port=port)) == (
            True, f"127.0.0.1:{port} open", f"127.0.0.1:{port} open")
    finally:
        s.close()
    ok, expected, seen = run_here(PortCheck(type="port", name="p", port=port))
    assert not ok and seen == f"127.0.0.1:{port} closed"
    assert run_here(PortCheck(type="port", name="p", port=port, open=False))[0]


# -- container ------------------------------------------------------------------------

def container(**kw) -> ContainerCheck:
    return ContainerCheck(type="container", name="c", container=kw.pop("container", "ch2-web"), **kw)


def test_container_running():
    assert judge_of(container())(0, "running true\n", "") == (True, "container ch2-web running", "container ch2-web running")


def test_container_stopped():
    ok, expected, seen = judge_of(container())(0, "exited false\n", "")
    assert (ok, expected, seen) == (False, "container ch2-web running", "container ch2-web exited")
    assert judge_of(container(running=False))(0, "exited false\n", "")[0]


def test_container_missing():
    err = "Error: No such object: ch2-web\n"
    assert judge_of(container())(1, "", err) == (False, "container ch2-web running", "no such container")
    assert judge_of(container(running=False))(1, "", err) == (True, "container ch2-web not running", "no such container")


def test_container_docker_itself_fails():
    err = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
    for running in (True, False):  # no verdict either way without an answer from docker
        ok, _, seen = judge_of(container(running=running))(1, "", err)
        assert not ok and seen == err.strip()


def test_container_script_quotes_the_name():
    script = verify._container(container(container="odd name;rm -rf /"))[0]
    assert script.endswith("'odd name;rm -rf /'")


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_container_missing_for_real():
    """The real docker CLI's wording for a missing container is what the judge looks for."""
    if not _docker_answers():
        pytest.skip("no docker daemon")
    name = "vmdock-test-no-such-container-7f3a"
    assert run_here(container(container=name)) == (False, f"container {name} running", "no such container")
    assert run_here(container(container=name, running=False))[0]


# -- run_check / run_checks with a fake transport -----------------------------------------------

class FakeTransport:
    def __init__(self, answers, reachable: bool = True):
        self.answers = list(answers)
        self.calls = []
        self.reachable = reachable

    def connect(self, wait):
        if not self.reachable:
            raise UnreachableError("cannot reach the machine over SSH (vagrant@127.0.0.1:2222): refused")

    def run_script(self, script, **kw):
        self.calls.append((script, kw))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return SimpleNamespace(exit_code=a[0], stdout=a[1], stderr=a[2], seconds=0.0)


def fake_ctx(checks, log: Log | None = None) -> SimpleNamespace:
    lab = Lab.model_validate({"name": "ch91-alpha", "chapter": 91, "title": "t",
                              "machines": [{"name": "web"}, {"name": "db"}], "checks": checks})
    return SimpleNamespace(lab=lab, step_env=lambda machine: {"VMDOCK_MACHINE": machine},
                           log=log or Log(Path("/nonexistent/vmdock.log")))


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(verify.time, "sleep", lambda s: slept.append(s))
    return slept


def test_run_check_retries_until_it_passes(no_sleep):
    ctx = fake_ctx([{"name": "up", "type": "command", "run": "echo hi", "contains": "hi", "retries": 3}])
    t = FakeTransport([(1, "", "not yet"), (0, "", ""), (0, "hi\n", "")])
    r = run_check(ctx, ctx.lab.checks[0], t)
    assert r.passed and r.attempts == 3 and no_sleep == [2, 2]
    assert (r.name, r.type, r.machine, r.seen) == ("up", "command", "web", "exit 0")
    script, kw = t.calls[0]
    assert script == "echo hi"
    assert kw["cwd"] == "/opt/vmdock/labs/ch91-alpha" and kw["env"] == {"VMDOCK_MACHINE": "web"}
    assert kw["check"] is False and kw["timeout"] == 60


def test_run_check_gives_up_after_the_retries(no_sleep):
    ctx = fake_ctx([{"name": "c", "type": "command", "run": "x", "retries": 1, "on": "db"}])
    r = run_check(ctx, ctx.lab.checks[0], FakeTransport([(1, "", ""), (2, "out", "")]))
    assert not r.passed and r.attempts == 2 and r.machine == "db"
    assert r.expected == "exit 0" and r.seen == "exit 2; stdout: 'out'"


def test_a_lost_connection_fails_the_check_not_the_run(no_sleep):
    ctx = fake_ctx([{"name": "c", "type": "port", "port": 80}])
    r = run_check(ctx, ctx.lab.checks[0], FakeTransport([CommandError("ssh: connection lost", machine="web")]))
    assert not r.passed and r.expected == "an answer" and r.seen == "ssh: connection lost"


def test_an_unreachable_machine_is_an_error_not_a_failure(no_sleep):
    ctx = fake_ctx([{"name": "c", "type": "port", "port": 80, "retries": 5}])
    r = run_check(ctx, ctx.lab.checks[0], FakeTransport([UnreachableError("SSH connection failed: reset")]))
    assert r.status == "error" and r.error == "SSH connection failed: reset" and no_sleep == []


def test_run_checks_on_an_unreachable_machine_reports_each_check_as_an_error(no_sleep):
    ctx = fake_ctx([
        {"name": "a", "type": "command", "run": "a"},
        {"name": "b", "type": "command", "run": "b", "on": "db"},
        {"name": "c", "type": "command", "run": "c"},
    ])
    web, db = FakeTransport([], reachable=False), FakeTransport([(0, "", "")])
    results = run_checks(ctx, {"web": web, "db": db})
    assert [(r.name, r.status) for r in results] == [("a", "error"), ("b", "passed"), ("c", "error")]
    assert results[0].error.startswith("cannot reach the machine over SSH") and web.calls == []


def test_check_output_with_a_secret_is_masked(no_sleep, tmp_path):
    log = Log(tmp_path / "vmdock.log")
    log.add_secrets(["s3cr3t-value"])
    ctx = fake_ctx([{"name": "c", "type": "command", "run": "x", "contains": "nope"}], log)
    r = run_check(ctx, ctx.lab.checks[0], FakeTransport([(0, "token=s3cr3t-value", "")]))
    assert not r.passed and "s3cr3t-value" not in r.seen and "token=***" in r.seen


def test_errored_names_every_check_with_the_reason():
    ctx = fake_ctx([{"name": "a", "type": "command", "run": "a"}, {"name": "b", "type": "port", "port": 1, "on": "db"}])
    results = errored(ctx.lab, "the lab is not up")
    assert [(r.name, r.machine, r.status, r.error) for r in results] == [
        ("a", "web", "error", "the lab is not up"), ("b", "db", "error", "the lab is not up")]
    assert [r.name for r in errored(ctx.lab, "x", only=["b"])] == ["b"]


def test_run_checks_only_and_machines(no_sleep):
    ctx = fake_ctx([
        {"name": "a", "type": "command", "run": "a"},
        {"name": "b", "type": "command", "run": "b", "on": "db"},
        {"name": "c", "type": "command", "run": "c"},
    ])
    web, db = FakeTransport([(0, "", ""), (1, "", "")]), FakeTransport([(0, "", "")])
    results = run_checks(ctx, {"web": web, "db": db})
    assert [(r.name, r.machine, r.passed) for r in results] == [("a", "web", True), ("b", "db", True), ("c", "web", False)]
    only = run_checks(ctx, {"web": FakeTransport([]), "db": FakeTransport([(0, "", "")])}, only=["b"])
    assert [r.name for r in only] == ["b"]


# -- JUnit ---------------------------------------------------------------------------------

def _results():
    return [
        CheckResult("page answers", "http", "web", True, 0.5, "HTTP 200", "HTTP 200"),
        CheckResult('db <port> & "quotes"', "port", "db", False, 1.25, "127.0.0.1:3306 open", "127.0.0.1:3306 closed", 3),
        CheckResult("中文 检查", "command", "web", False, 2.0, "exit 0, stdout contains 'a<b>'", "exit 1; stdout: 'x & y'"),
    ]


def test_junit_xml_parses_and_counts_failures():
    text = junit_xml("ch91-alpha", _results())
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.get("name") == "vmdock.ch91-alpha"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    assert suite.get("time") == "3.75"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["page answers", 'db <port> & "quotes"', "中文 检查"]
    assert [c.get("classname") for c in cases] == ["vmdock.ch91-alpha.web", "vmdock.ch91-alpha.db", "vmdock.ch91-alpha.web"]
    assert cases[0].find("failure") is None
    fail = cases[1].find("failure")
    assert fail.get("type") == "port"
    assert fail.get("message") == "expected 127.0.0.1:3306 open; saw 127.0.0.1:3306 closed"
    assert fail.text == "expected: 127.0.0.1:3306 open\nseen: 127.0.0.1:3306 closed\nattempts: 3"
    assert "x & y" in cases[2].find("failure").text


def test_junit_xml_errors_are_error_elements_and_counted():
    results = _results() + errored(Lab.model_validate({"name": "xx", "chapter": 1, "title": "t", "machines": [{"name": "web"}],
                                                        "checks": [{"name": "e", "type": "port", "port": 1}]}), "not up")
    suite = ET.fromstring(junit_xml("ch91-alpha", results)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "1")
    case = suite.findall("testcase")[3]
    assert case.find("failure") is None and case.find("error").get("message") == "not up"


def test_junit_xml_message_is_capped_and_empty_runs_are_valid():
    long = CheckResult("c", "command", "web", False, 0.0, "exit 0", "y" * 5000)
    fail = ET.fromstring(junit_xml("x", [long])).find("testsuite/testcase/failure")
    assert len(fail.get("message")) == 500 and fail.text.endswith("attempts: 1")
    suite = ET.fromstring(junit_xml("x", [])).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("0", "0")


def test_check_result_to_dict():
    d = _results()[1].to_dict()
    assert d == {"name": 'db <port> & "quotes"', "type": "port", "machine": "db", "passed": False, "seconds": 1.25,
                 "expected": "127.0.0.1:3306 open", "seen": "127.0.0.1:3306 closed", "attempts": 3,
                 "error": None, "status": "failed"}
