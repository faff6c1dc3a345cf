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
from pathlib import Path
from typing import Callable, Iterable, Sequence

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
    out_lines: list[str] = []
    err_tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            list(map(str, cmd)),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except FileNotFoundError as exc:
        log.command(where, text, time.monotonic() - start, None)
        raise CommandError(
            f"{cmd[0]} is not installed or not on PATH", command=text, log=log.path
        ) from exc

    def pump(stream: Iterable[str], sink: list | deque, prefix: str) -> None:
        for line in stream:
            line = line.rstrip("\n")
            sink.append(line)
            log.write(f"    {prefix}{line}")
            if on_line:
                on_line(log.mask(line))

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, out_lines, ""), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, err_tail, "! "), daemon=True),
    ]
    for t in threads:
        t.start()
    if input is not None and proc.stdin is not None:
        proc.stdin.write(input)
        proc.stdin.close()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(5)
        log.command(where, text, time.monotonic() - start, None)
        raise CommandError(
            error_message or f"timed out after {timeout:.0f}s",
            command=log.mask(text),
            stderr_tail=log.mask(tail("\n".join(err_tail))),
            log=log.path,
        )
    except BaseException:  # Ctrl-C: do not leave the child behind
        proc.kill()
        proc.wait()
        log.command(where, text, time.monotonic() - start, None)
        raise
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    log.command(where, text, seconds, code)
    stdout = "\n".join(out_lines)
    stderr = "\n".join(err_tail)
    if code != 0 and check:
        raise CommandError(
            error_message or f"{Path(str(cmd[0])).name} failed",
            command=log.mask(text),
            exit_code=code,
            stderr_tail=log.mask(tail(stderr or stdout)),
            log=log.path,
        )
    return subprocess.CompletedProcess(list(map(str, cmd)), code, stdout, stderr)
