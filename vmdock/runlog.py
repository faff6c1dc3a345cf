"""Run external commands, log each with its duration, raise on failure.

Every external command vmdock starts (vagrant, docker, debootstrap, remote
commands over SSH) is written to a log file with its duration and exit code;
its output follows.  Errors point to that file.
"""
from __future__ import annotations

import datetime as _dt
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import CommandError, tail

LineSink = Callable[[str], None]


def quote(cmd: Sequence[str] | str) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)


MASK = "***"
#: secrets shorter than this are not masked (masking "ab" would garble every log line)
MASK_MIN = 4


class Log:
    """An append-only log file, safe to share between threads.

    Secret values registered with ``add_secrets`` never reach the file: every
    line written is masked, and ``mask`` does the same for text shown
    elsewhere (``-v`` output, the stderr tail of an error, a check's output).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add_secrets(self, values: Iterable[str]) -> None:
        with self._lock:
            known = set(self._secrets) | {v for v in values if len(v) >= MASK_MIN}
            self._secrets = tuple(sorted(known, key=len, reverse=True))  # a secret inside another: longest first

    def mask(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, MASK)
        return text

    def write(self, text: str) -> None:
        text = self.mask(text)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")

    def event(self, message: str) -> None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.write(f"[{stamp}] {message}")

    def command(self, where: str, cmd: str, seconds: float, code: int | None) -> None:
        status = "ok" if code == 0 else f"exit {code}"
        self.event(f"{where}$ {cmd}  ({seconds:.2f}s, {status})")


class _Pumps:
    """Threads copying a child's stdout and stderr, line by line, to the log
    (and ``on_line``); stdout is kept whole, stderr's last 40 lines."""

    def __init__(self, proc: subprocess.Popen, log: Log, on_line: LineSink | None):
        self.out_lines: list[str] = []
        self.err_tail: deque[str] = deque(maxlen=40)
        self.log, self.on_line = log, on_line
        self.threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, self.out_lines, ""), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, self.err_tail, "! "), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _pump(self, stream: Iterable[str], sink: list | deque, prefix: str) -> None:
        for line in stream:
            line = line.rstrip("\n")
            sink.append(line)
            self.log.write(f"    {prefix}{line}")
            if self.on_line:
                self.on_line(self.log.mask(line))

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)


def _start(cmd: Sequence[str], log: Log, where: str, text: str, start: float, **popen) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", **popen,
        )
    except FileNotFoundError as exc:
        log.command(where, text, time.monotonic() - start, None)
        raise CommandError(f"{cmd[0]} is not installed or not on PATH", command=text, log=log.path) from exc


def run(
    cmd: Sequence[str],
    log: Log,
    *,
    where: str = "host",
    env: dict | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    on_line: LineSink | None = None,
    check: bool = True,
    input: str | None = None,
    error_message: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a host command; its output goes to the log (and to ``on_line``).

    Raises CommandError (with the stderr tail and the log path) when it exits
    non-zero and ``check`` is true.
    """
    text = quote(cmd)
    log.event(f"{where}$ {text}  (started)")
    start = time.monotonic()
    proc = _start(cmd, log, where, text, start, env=env, cwd=cwd,
                  stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    pumps = _Pumps(proc, log, on_line)
    if input is not None and proc.stdin is not None:
        proc.stdin.write(input)
        proc.stdin.close()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pumps.join(5)
        log.command(where, text, time.monotonic() - start, None)
        raise CommandError(
            error_message or f"timed out after {timeout:.0f}s",
            command=log.mask(text),
            stderr_tail=log.mask(tail("\n".join(pumps.err_tail))),
            log=log.path,
        )
    except BaseException:  # Ctrl-C: do not leave the child behind
        proc.kill()
        proc.wait()
        log.command(where, text, time.monotonic() - start, None)
        raise
    pumps.join()
    log.command(where, text, time.monotonic() - start, code)
    stdout = "\n".join(pumps.out_lines)
    stderr = "\n".join(pumps.err_tail)
    if code != 0 and check:
        raise CommandError(
            error_message or f"{Path(str(cmd[0])).name} failed",
            command=log.mask(text),
            exit_code=code,
            stderr_tail=log.mask(tail(stderr or stdout)),
            log=log.path,
        )
    return subprocess.CompletedProcess(list(map(str, cmd)), code, stdout, stderr)
