"""SSH to a lab machine with Fabric: run scripts as root, copy files.

Fabric is told not to read ~/.ssh/config, gets a connect timeout, and never
consults known_hosts (machines are recreated with new host keys on the same
forwarded ports).  Every remote command is logged with its duration and its
output; a failure raises ``ProvisionError`` with the tail of stderr.
"""
from __future__ import annotations

import io
import posixpath
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Callable

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut

from .driver import SshConfig
from .errors import ProvisionError, tail
from .runlog import Log

REMOTE_TMP = "/tmp/vmdock"


class _LineSink(io.TextIOBase):
    """A stream Fabric writes output to; hands on whole lines."""

    def __init__(self, emit: Callable[[str], None]):
        self._emit = emit
        self._buf = ""
        self.lines: list[str] = []

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.lines.append(line)
            self._emit(line)
        return len(s)

    def flush(self) -> None:
        pass

    def close_out(self) -> None:
        if self._buf:
            self.lines.append(self._buf)
            self._emit(self._buf)
            self._buf = ""


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


class Transport:
    def __init__(
        self,
        machine: str,
        ssh: SshConfig,
        log: Log,
        *,
        lab: str,
        connect_timeout: int = 15,
        on_line: Callable[[str, str], None] | None = None,
    ):
        self.machine = machine
        self.ssh = ssh
        self.log = log
        self.lab = lab
        self.connect_timeout = connect_timeout
        self.on_line = on_line
        self._conn: fabric.Connection | None = None

    # connection ---------------------------------------------------------
    def _connection(self) -> fabric.Connection:
        if self._conn is None:
            config = fabric.Config(lazy=True, overrides={"load_ssh_configs": False, "run": {"pty": False}})
            self._conn = fabric.Connection(
                host=self.ssh.host,
                user=self.ssh.user,
                port=self.ssh.port,
                config=config,
                connect_timeout=self.connect_timeout,
                connect_kwargs={
                    "key_filename": list(self.ssh.identity_files),
                    "look_for_keys": False,
                    "allow_agent": False,
                    "banner_timeout": self.connect_timeout,
                    "auth_timeout": self.connect_timeout,
                },
            )
        return self._conn

    def connect(self, wait: float = 120) -> None:
        """Open the connection, retrying until sshd answers or ``wait`` runs out."""
        deadline = time.monotonic() + wait
        start = time.monotonic()
        last: Exception | None = None
        while True:
            try:
                self._connection().open()
                self.log.event(
                    f"{self.machine}: ssh {self.ssh.user}@{self.ssh.host}:{self.ssh.port} connected "
                    f"({time.monotonic() - start:.2f}s)"
                )
                return
            except (socket.error, paramiko.SSHException, EOFError) as exc:
                last = exc
                self.close()
                if time.monotonic() >= deadline:
                    break
                time.sleep(1)
        raise ProvisionError(
            f"cannot reach the machine over SSH ({self.ssh.user}@{self.ssh.host}:{self.ssh.port}): {last}",
            lab=self.lab,
            machine=self.machine,
            log=self.log.path,
            hint="is it running? `vmdock status` shows the machines",
        )

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # commands -------------------------------------------------------------
    def run(
        self,
        command: str,
        *,
        timeout: int | None = None,
        check: bool = True,
        step: str | None = None,
        shown: str | None = None,
        secret: bool = False,
    ) -> Result:
        """Run ``command`` (a shell line) as the SSH user; output is logged unless ``secret``."""
        conn = self._connection()
        label = shown or command
        self.log.event(f"{self.machine}$ {label}  (started)")

        def emit(prefix):
            def _e(line: str) -> None:
                if secret:
                    return
                self.log.write(f"    {prefix}{line}")
                if self.on_line:
                    self.on_line(self.machine, line)
            return _e

        out, err = _LineSink(emit("")), _LineSink(emit("! "))
        start = time.monotonic()
        try:
            res = conn.run(command, hide=True, warn=True, timeout=timeout, out_stream=out, err_stream=err, in_stream=False)
            code = res.exited
        except CommandTimedOut:
            out.close_out(), err.close_out()
            self.log.command(self.machine, label, time.monotonic() - start, None)
            raise ProvisionError(
                f"timed out after {timeout}s",
                lab=self.lab,
                machine=self.machine,
                step=step,
                command=label,
                stderr_tail=tail("\n".join(err.lines or out.lines)),
                log=self.log.path,
            ) from None
        except (socket.error, paramiko.SSHException, EOFError) as exc:
            self.log.command(self.machine, label, time.monotonic() - start, None)
            self.close()
            raise ProvisionError(
                f"SSH connection failed: {exc}", lab=self.lab, machine=self.machine, step=step,
                command=label, log=self.log.path,
            ) from None
        out.close_out(), err.close_out()
        seconds = time.monotonic() - start
        self.log.command(self.machine, label, seconds, code)
        result = Result(code, "\n".join(out.lines), "\n".join(err.lines), seconds)
        if check and code != 0:
            raise ProvisionError(
                "command failed" if code >= 0 else
                "the SSH session ended without an exit status (the machine stopped or the connection was lost)",
                lab=self.lab,
                machine=self.machine,
                step=step,
                command=label,
                exit_code=code,
                stderr_tail=tail(result.stderr or result.stdout),
                log=self.log.path,
            )
        return result

    def run_script(
        self,
        script: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        name: str = "script",
        timeout: int | None = None,
        check: bool = True,
        step: str | None = None,
    ) -> Result:
        """Upload a bash script and run it as root with ``bash -euo pipefail``."""
        lines = ["# written by vmdock"]
        for k, v in (env or {}).items():
            lines.append(f"export {k}={shlex.quote(str(v))}")
        if cwd:
            lines.append(f"cd {shlex.quote(cwd)}")
        body = "\n".join(lines) + "\n" + script + ("\n" if not script.endswith("\n") else "")
        remote = posixpath.join(REMOTE_TMP, f"{name}.sh")
        self.put_bytes(body.encode("utf-8"), remote, mode=0o600)
        return self.run(
            f"sudo -n bash -euo pipefail {shlex.quote(remote)}",
            timeout=timeout,
            check=check,
            step=step,
            shown=f"[{name}] " + (script.strip().splitlines() or [""])[0][:100],
        )

    # files ------------------------------------------------------------------
    def _sftp(self) -> paramiko.SFTPClient:
        return self._connection().sftp()

    def _ensure_tmp(self) -> None:
        sftp = self._sftp()
        try:
            sftp.stat(REMOTE_TMP)
        except FileNotFoundError:
            sftp.mkdir(REMOTE_TMP, mode=0o700)

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        start = time.monotonic()
        self._ensure_tmp()
        sftp = self._sftp()
        with sftp.open(remote, "wb") as fh:
            fh.set_pipelined(True)
            fh.write(data)
        sftp.chmod(remote, mode)
        self.log.event(f"{self.machine}: put {len(data)} bytes → {remote} ({time.monotonic() - start:.2f}s)")

    def put_file(self, local: str, remote: str) -> None:
        start = time.monotonic()
        self._ensure_tmp()
        self._sftp().put(local, remote)
        self.log.event(f"{self.machine}: put {local} → {remote} ({time.monotonic() - start:.2f}s)")

    def get_file(self, remote: str, local: str) -> None:
        start = time.monotonic()
        self._sftp().get(remote, local)
        self.log.event(f"{self.machine}: get {remote} → {local} ({time.monotonic() - start:.2f}s)")
