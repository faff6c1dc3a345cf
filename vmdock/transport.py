"""SSH to a lab machine with Fabric: run scripts as root, copy files.

Fabric is told not to read ~/.ssh/config, gets a connect timeout, and never
consults known_hosts (machines are recreated with new host keys on the same
forwarded ports).  Every remote command is logged with its duration and its
output (secrets masked, see ``Log.add_secrets``); a failure raises
``ProvisionError`` with the tail of stderr, and a lost or refused connection
``UnreachableError``.

A script runs from a file that holds its text alone, so bash's line numbers
are the script's own; its environment (which holds the lab's secrets) travels
on the SSH channel's stdin and never touches the machine's disk; the file is
removed when the script ends.
"""
from __future__ import annotations

import io
import posixpath
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut

from .driver import SshConfig
from .errors import ProvisionError, UnreachableError, tail
from .runlog import Log

REMOTE_TMP = "/tmp/vmdock"

# The ERR trap names the line of the command that stopped the script (set -e);
# bash names it itself for its own errors ("FILE: line N: X: unbound variable").
_ERR_TRAP = 'trap \'echo "vmdock: line $LINENO: exit $?" >&2\' ERR'


def script_command(remote: str, trap: bool = False) -> str:
    """The shell line that runs the uploaded script ``remote`` as root.

    It reads ``export``/``cd`` lines from stdin first, then sources the script
    in ``bash -euo pipefail`` (so ``$0`` is its path and errors name its own
    lines), and removes it whatever happens.  ``trap``: say on stderr at which
    line a failing command stopped it.
    """
    q = shlex.quote(remote)
    source = shlex.quote((_ERR_TRAP + "; " if trap else "") + '. "$0"')
    run = f"bash -euo pipefail -c {source} {q}"
    inner = f'eval "$(cat)"; rc=0; {run} || rc=$?; rm -f {q}; exit $rc'
    return f"sudo -n bash -c {shlex.quote(inner)}"


def map_lines(text: str, remote: str, origin: str) -> str:
    """Name the lab's own file and field for the lines of an uploaded script.

    ``/tmp/vmdock/step3.sh: line 3: X: unbound variable`` and ``vmdock: line 3: exit 1``
    become ``labs/x/lab.yaml: steps[2].run line 3: …``.
    """
    text = re.sub(rf"(?m)^{re.escape(remote)}: line (\d+):", lambda m: f"{origin} line {m.group(1)}:", text)
    return re.sub(
        r"(?m)^vmdock: line (\d+): exit (\d+)$", lambda m: f"{origin} line {m.group(1)}: exit {m.group(2)}", text
    )


def failed_line(text: str, origin: str) -> str | None:
    """The last line of ``text`` (already mapped) that names ``origin``."""
    found = [line for line in text.splitlines() if line.startswith(origin + " line ")]
    return found[-1] if found else None


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


class _WholeInput(io.StringIO):
    """A command's standard input for invoke, read whole at once.

    invoke reads a stream that is not a terminal one character at a time with
    a 10 ms nap in between (``invoke.terminals.bytes_to_read``): a step's
    3 kB environment took 30 s to send, a check's 200 bytes 2 s.
    """

    def read(self, size: int | None = -1) -> str:
        return super().read(-1)


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
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = exc
                self.close()
                if time.monotonic() >= deadline:
                    break
                time.sleep(1)
        raise UnreachableError(
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
        stdin: str | None = None,
    ) -> Result:
        """Run ``command`` (a shell line) as the SSH user; output is logged unless ``secret``.

        ``stdin``: text for the command's standard input, which is then closed.
        """
        conn = self._connection()
        label = self.log.mask(shown or command)
        self.log.event(f"{self.machine}$ {label}  (started)")
        out, err = self._sink("", secret), self._sink("! ", secret)
        start = time.monotonic()
        try:
            res = conn.run(command, hide=True, warn=True, timeout=timeout, out_stream=out, err_stream=err,
                           in_stream=_WholeInput(stdin) if stdin is not None else False)
            code = res.exited
        except CommandTimedOut:
            out.close_out()
            err.close_out()
            self.log.command(self.machine, label, time.monotonic() - start, None)
            raise ProvisionError(
                f"timed out after {timeout}s",
                lab=self.lab,
                machine=self.machine,
                step=step,
                command=label,
                stderr_tail=self.log.mask(tail("\n".join(err.lines or out.lines))),
                log=self.log.path,
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.log.command(self.machine, label, time.monotonic() - start, None)
            self.close()
            raise UnreachableError(
                f"SSH connection failed: {exc}", lab=self.lab, machine=self.machine, step=step,
                command=label, log=self.log.path,
            ) from None
        out.close_out()
        err.close_out()
        seconds = time.monotonic() - start
        self.log.command(self.machine, label, seconds, code)
        result = Result(code, "\n".join(out.lines), "\n".join(err.lines), seconds)
        return self._judge(result, label, step, check)

    def _sink(self, prefix: str, secret: bool) -> _LineSink:
        """Where a command's output lines go: the log (``prefix`` marks stderr) and ``on_line``;
        nowhere when ``secret``."""
        def emit(line: str) -> None:
            if secret:
                return
            self.log.write(f"    {prefix}{line}")
            if self.on_line:
                self.on_line(self.machine, self.log.mask(line))
        return _LineSink(emit)

    def _judge(self, result: Result, label: str, step: str | None, check: bool) -> Result:
        """``result``, or the error it is: no exit status (the machine went away), or a failure."""
        code = result.exit_code
        if code < 0:
            raise UnreachableError(
                "the SSH session ended without an exit status (the machine stopped or the connection was lost)",
                lab=self.lab, machine=self.machine, step=step, command=label, log=self.log.path,
            )
        if check and code != 0:
            raise ProvisionError(
                "command failed",
                lab=self.lab,
                machine=self.machine,
                step=step,
                command=label,
                exit_code=code,
                stderr_tail=self.log.mask(tail(result.stderr or result.stdout)),
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
        origin: str | None = None,
    ) -> Result:
        """Run a bash script as root with ``bash -euo pipefail`` (see ``script_command``).

        ``origin`` names where the script's text comes from (``labs/x/lab.yaml:
        steps[2].run``): errors then name that file and the script's own line.
        """
        prelude = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in (env or {}).items())
        if cwd:
            prelude += f"cd {shlex.quote(cwd)}\n"
        remote = posixpath.join(REMOTE_TMP, f"{name}.sh")
        self.put_bytes(script.encode("utf-8"), remote, mode=0o600)
        shown = f"[{name}] " + (script.strip().splitlines() or [""])[0][:100]
        try:
            return self.run(
                script_command(remote, trap=origin is not None),
                timeout=timeout, check=check, step=step, shown=shown, stdin=prelude,
            )
        except ProvisionError as exc:
            if origin and exc.stderr_tail:
                exc.stderr_tail = map_lines(exc.stderr_tail, remote, origin)
                where = failed_line(exc.stderr_tail, origin)
                if where and exc.message == "command failed":
                    exc.message = f"failed at {where}"
            raise

    # files ------------------------------------------------------------------
    def _sftp(self) -> paramiko.SFTPClient:
        sftp: paramiko.SFTPClient = self._connection().sftp()  # fabric has no type hints
        return sftp

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
