"""debootstrap, the one way vmdock runs it: the minbase rootfs and the box both use it."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import CommandError, ProviderError, tail
from ..runlog import Log, run

LineSink = Callable[[str], None]

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR_ENV = "VMDOCK_APT_MIRROR"
TIMEOUT = 3600
_ISOLATE = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]


class OutputTail:
    """An ``on_line`` that keeps the last lines of stdout *and* stderr.

    debootstrap (and ``docker build``) print the interesting error on stdout
    or mixed with progress; this keeps it for the error.
    """

    def __init__(self, forward: LineSink | None, lines: int = 25):
        self.lines: deque[str] = deque(maxlen=lines)
        self.forward = forward

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.forward:
            self.forward(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def _isolated(cmd: list[str], log: Log, root: list[str]) -> list[str]:
    """``cmd`` in mount and PID namespaces of its own, when the host allows.

    Killing debootstrap (Ctrl-C, timeout: run() SIGKILLs its child) then
    kills everything it started too (dpkg running in the chroot would go on
    writing into the target while we delete it), and the mounts it made in
    the target (proc, sys) vanish with the namespace instead of lingering on
    the host.
    """
    probe = run([*root, *_ISOLATE, "true"], log, check=False, timeout=30)
    if probe.returncode == 0:
        return [*root, *_ISOLATE, *cmd]
    log.event("unshare --mount --pid does not work here: debootstrap runs without namespaces")
    return [*root, *cmd]


def check_installed(log: Log) -> None:
    """debootstrap and the Debian archive keyring are there."""
    if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
        raise ProviderError(
            "debootstrap is not installed",
            hint="apt-get install debootstrap (vmdock builds its Debian images with it)",
            log=log.path,
        )
    if not KEYRING.is_file():
        raise ProviderError(
            f"the Debian archive keyring {KEYRING} is missing",
            hint="apt-get install debian-archive-keyring (debootstrap checks the mirror with it)",
            log=log.path,
        )


def _log_own_log(target: Path, log: Log) -> None:
    """The end of debootstrap's own log (it goes away with the failed build)."""
    own_log = target / "debootstrap" / "debootstrap.log"
    with contextlib.suppress(OSError):
        lines = own_log.read_text(encoding="utf-8", errors="replace").splitlines()
        log.write(f"--- last lines of {own_log} (removed with the failed build):")
        log.write("\n".join("    " + line for line in lines[-80:]) or "    (empty)")


def debootstrap(
    log: Log,
    target: Path,
    *,
    suite: str,
    mirror: str,
    arch: str,
    root: list[str],
    include: Sequence[str] = (),
    step: str,
    on_line: LineSink | None = None,
) -> float:
    """``debootstrap --variant=minbase`` of ``suite`` from ``mirror`` into ``target``.

    Returns the seconds it took.  A failure is a CommandError for ``step``
    whose tail is debootstrap's output and whose hint names the mirror; the
    end of debootstrap's own log goes to ``log``.
    """
    check_installed(log)
    cmd = ["debootstrap", "--variant=minbase", f"--arch={arch}", f"--keyring={KEYRING}"]
    if include:
        cmd.append("--include=" + ",".join(include))
    out = OutputTail(on_line)
    started = time.monotonic()
    try:
        run(
            _isolated([*cmd, suite, str(target), mirror], log, root),
            log, timeout=TIMEOUT, on_line=out, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
    except CommandError as exc:
        _log_own_log(target, log)
        exc.stderr_tail = tail(out.text()) or exc.stderr_tail
        raise exc.with_context(
            step=step,
            hint=f"debootstrap could not build Debian {suite} from {mirror}: is the mirror "
            f"reachable (set ${MIRROR_ENV} to a reachable Debian mirror)? The log has "
            "debootstrap's output and the end of its own debootstrap.log",
        )
    return time.monotonic() - started
