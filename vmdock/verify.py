"""Run a lab's checks inside its machines; report as a table, JSON or JUnit.

Each check says what it expected and what it saw, so a failing check can be
read without opening the log.  A check that could not run at all (the lab is
not up, its machine cannot be reached) is an *error*, not a failure: the
report still lists it, with the reason.
"""
from __future__ import annotations

import re
import shlex
import string
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .errors import UnreachableError, VmdockError
from .labcontext import Context, remote_lab_dir
from .model import CommandCheck, ContainerCheck, HttpCheck, PortCheck
from .transport import Transport

Judge = Callable[[int, str, str], "tuple[bool, str, str]"]  # (exit code, stdout, stderr) → (passed, expected, seen)

SHOWN = 400  # characters of output kept in a result
CONNECT_WAIT = 15  # seconds to wait for a machine's sshd before its checks are errors


@dataclass
class CheckResult:
    name: str
    type: str
    machine: str
    passed: bool
    seconds: float
    expected: str
    seen: str
    attempts: int = 1
    error: str | None = None  # why the check could not run (then it neither passed nor failed)

    @property
    def status(self) -> str:
        return "error" if self.error else ("passed" if self.passed else "failed")

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


def errored(lab, reason: str, only: list[str] | None = None) -> list[CheckResult]:
    """Every check of ``lab`` (a model.Lab), reported as an error for ``reason``."""
    return [
        CheckResult(c.name, c.type, lab.check_machine(c), False, 0.0, "", "", 0, error=reason)
        for c in lab.checks
        if not only or c.name in only
    ]


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= SHOWN else text[: SHOWN - 20] + f"… ({len(text)} chars)"


def _command(check: CommandCheck) -> tuple[str, Judge]:
    def judge(code: int, out: str, err: str) -> tuple[bool, str, str]:
        expected = [f"exit {check.exit_code}"]
        expected += [f"stdout contains {c!r}" for c in check.contains]
        if check.matches:
            expected.append(f"stdout matches /{check.matches}/")
        problems = []
        if code != check.exit_code:
            problems.append(f"exit {code}")
        missing = [c for c in check.contains if c not in out]
        if missing:
            problems.append("missing " + ", ".join(repr(m) for m in missing))
        if check.matches and not re.search(check.matches, out, re.MULTILINE):
            problems.append(f"no match for /{check.matches}/")
        seen = "; ".join(problems) if problems else f"exit {code}"
        if problems:
            seen += f"; stdout: {_clip(out)!r}" + (f"; stderr: {_clip(err)!r}" if err.strip() else "")
        return not problems, ", ".join(expected), seen

    return check.run, judge


_HTTP_MARK = "__VMDOCK_HTTP_STATUS__"


def _http(check: HttpCheck, env: dict[str, str] | None = None) -> tuple[str, Judge]:
    # ${NAME} in the URL, headers, body and cacert: the lab's env, secrets and exports
    sub = (lambda text: string.Template(text).safe_substitute(env)) if env else (lambda text: text)
    # `-X HEAD` makes curl wait for a body that never comes (exit 18 or 28); --head does not
    method = ["--head"] if check.method == "HEAD" else ["-X", check.method]
    args = ["curl", "-sS", "-o", "-", "-w", f"\n{_HTTP_MARK}%{{http_code}}", *method, "--max-time", str(check.timeout)]
    if check.cacert:
        args += ["--cacert", sub(check.cacert)]
    for k, v in check.headers.items():
        args += ["-H", f"{k}: {sub(v)}"]
    if check.body is not None:
        args += ["--data-binary", sub(check.body)]
    args.append(sub(check.url))
    script = shlex.join(args)

    def judge(code: int, out: str, err: str) -> tuple[bool, str, str]:
        expected = f"HTTP {check.status}" + "".join(f", body contains {c!r}" for c in check.contains)
        body, _, status = out.rpartition(_HTTP_MARK)
        status = status.strip()
        if code != 0 or not status.isdigit() or status == "000":
            return False, expected, f"no answer from {args[-1]}: {_clip(err) or f'curl exit {code}'}"
        problems = []
        if int(status) != check.status:
            problems.append(f"HTTP {status}")
        missing = [c for c in check.contains if c not in body]
        if missing:
            problems.append("body lacks " + ", ".join(repr(m) for m in missing))
        if problems:
            return False, expected, "; ".join(problems) + f"; body: {_clip(body)!r}"
        return True, expected, f"HTTP {status}"

    return script, judge


def _port(check: PortCheck) -> tuple[str, Judge]:
    probe = f"exec 3<>/dev/tcp/{check.host}/{check.port}"
    script = f"timeout 5 bash -c {shlex.quote(probe)} && echo open || echo closed"

    def judge(code: int, out: str, err: str) -> tuple[bool, str, str]:
        state = "open" if out.strip().endswith("open") else "closed"
        want = "open" if check.open else "closed"
        return state == want, f"{check.host}:{check.port} {want}", f"{check.host}:{check.port} {state}"

    return script, judge


def _container(check: ContainerCheck) -> tuple[str, Judge]:
    script = f"docker inspect -f '{{{{.State.Status}}}} {{{{.State.Running}}}}' {shlex.quote(check.container)}"

    def judge(code: int, out: str, err: str) -> tuple[bool, str, str]:
        want = "running" if check.running else "not running"
        if code != 0:
            seen = "no such container" if "No such" in err else _clip(err)
            return (not check.running and "No such" in err), f"container {check.container} {want}", seen
        status, _, running = out.strip().partition(" ")
        ok = (running == "true") == check.running
        return ok, f"container {check.container} {want}", f"container {check.container} {status}"

    return script, judge


_KINDS: dict[str, Callable[..., tuple[str, Judge]]] = {
    "command": _command, "http": _http, "port": _port, "container": _container,
}


def run_check(ctx: Context, check, transport: Transport) -> CheckResult:
    machine = ctx.lab.check_machine(check)
    env = ctx.step_env(machine)
    script, judge = _http(check, env) if check.type == "http" else _KINDS[check.type](check)
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            res = transport.run_script(
                script,
                env=env,
                cwd=remote_lab_dir(ctx.lab.name),
                name="check",
                timeout=check.timeout,
                check=False,
                step=f"check: {check.name}",
            )
            passed, expected, seen = judge(res.exit_code, res.stdout, res.stderr)
        except UnreachableError as exc:  # the check could not run: an error, not a failure
            return CheckResult(check.name, check.type, machine, False, round(time.monotonic() - start, 2), "", "",
                               attempts, error=ctx.log.mask(exc.message))
        except VmdockError as exc:  # a timeout fails the check, not the run
            passed, expected, seen = False, "an answer", str(exc.message)
        if passed or attempts > check.retries:
            break
        time.sleep(2)
    return CheckResult(check.name, check.type, machine, passed, round(time.monotonic() - start, 2),
                       ctx.log.mask(expected), ctx.log.mask(seen), attempts)


def run_checks(
    ctx: Context, transports: dict[str, Transport], events=None, only: list[str] | None = None
) -> list[CheckResult]:
    results = []
    unreachable: dict[str, str] = {}  # machine → why
    for check in ctx.lab.checks:
        if only and check.name not in only:
            continue
        machine = ctx.lab.check_machine(check)
        if machine not in unreachable:
            try:
                transports[machine].connect(wait=CONNECT_WAIT)
                unreachable[machine] = ""
            except UnreachableError as exc:
                unreachable[machine] = exc.message
        if unreachable[machine]:
            results.append(
                CheckResult(check.name, check.type, machine, False, 0.0, "", "", 0, error=unreachable[machine])
            )
            continue
        if events:
            events.step_start(machine, f"check:{check.name}", check.name)
        r = run_check(ctx, check, transports[machine])
        if r.error:
            unreachable[machine] = r.error
        if events and r.passed:
            events.step_done(machine, f"check:{check.name}", check.name, r.seconds, skipped=False)
        elif events:
            events.step_failed(machine, f"check:{check.name}", check.name, r.seconds)
        results.append(r)
    return results


_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Remove characters XML 1.0 cannot carry (raw stderr may hold them)."""
    return _XML_FORBIDDEN.sub("?", text)


def junit_xml(lab: str, results: list[CheckResult]) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"vmdock.{lab}",
        tests=str(len(results)),
        failures=str(sum(r.status == "failed" for r in results)),
        errors=str(sum(r.status == "error" for r in results)),
        time=f"{sum(r.seconds for r in results):.2f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=f"vmdock.{lab}.{r.machine}", name=_xml_text(r.name), time=f"{r.seconds:.2f}"
        )
        if r.error:
            err = ET.SubElement(case, "error", message=_xml_text(r.error[:500]), type="error")
            err.text = _xml_text(r.error)
        elif not r.passed:
            fail = ET.SubElement(
                case, "failure", message=_xml_text(f"expected {r.expected}; saw {r.seen}"[:500]), type=r.type
            )
            fail.text = _xml_text(f"expected: {r.expected}\nseen: {r.seen}\nattempts: {r.attempts}")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
