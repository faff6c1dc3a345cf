"""The file helpers every host build shares: one lock, atomic JSON writes,
metadata sidecars, root commands and the removal of a build folder.

No fcntl here: ``filelock`` locks on Windows too, where vmdock drives
VirtualBox.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BusyError, ProviderError
from ..runlog import Log, run

#: How long a builder waits for another process building the same thing.
LOCK_WAIT = 3600.0


@contextlib.contextmanager
def file_lock(path: Path, what: str, log: Log, wait: float = LOCK_WAIT) -> Iterator[None]:
    """An exclusive lock on ``path`` (made if missing), waiting at most ``wait`` seconds.

    The wait is logged; running out of it is a BusyError naming the lock.
    """
    import filelock  # with asyncio: only where a lock is taken (`vmdock list` reads and writes without one)

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.event(f"waiting for another vmdock process that is building {what} (lock {path})")
        try:
            lock.acquire(timeout=wait, poll_interval=0.5)
        except filelock.Timeout:
            raise BusyError(
                f"another vmdock process has been building {what} for over {wait:.0f}s",
                hint=f"wait for it, or if none is running remove {path}",
                log=log.path,
            ) from None
    try:
        yield
    finally:
        lock.release()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as ``path``: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sidecar(path: Path) -> Path:
    """The metadata file of a built file: ``<name>.json`` beside it."""
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    return read_json(sidecar(path))


def write_sidecar(path: Path, meta: dict) -> None:
    write_json_atomic(sidecar(path), meta)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def root_prefix(what: str) -> list[str]:
    """Run as root: nothing when we are root, else ``sudo -n`` (never prompts)."""
    if os.geteuid() == 0:
        return []
    if (
        shutil.which("sudo")
        and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return ["sudo", "-n"]
    raise ProviderError(f"{what} needs root", hint="run vmdock as root, or allow this user passwordless sudo")


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (deepest first)."""
    prefix = str(directory).rstrip("/")
    found: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.add(point)
    return sorted(found, key=len, reverse=True)


def _detach_loops_under(directory: Path, log: Log, root: list[str]) -> None:
    """Loop devices whose backing file is below ``directory`` (a killed box build)."""
    listed = run([*root, "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                 log, check=False, timeout=60)
    for line in listed.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(directory) + "/"):
            run([*root, "losetup", "--detach", parts[0]], log, check=False, timeout=60)


def remove_build_dir(directory: Path, log: Log, root: list[str], *, loops: bool = False) -> None:
    """Unmount what is mounted below ``directory`` (and detach its loop
    devices with ``loops``), then delete it.

    ``rm --one-file-system`` never follows into a mount that survived the
    unmount, so a failed build can never take the host's /dev or /proc with
    it.  Retried briefly: processes of a killed debootstrap may still be
    exiting (and writing) for a moment.
    """
    for attempt in range(4):
        if not directory.exists():
            return
        if attempt:
            time.sleep(0.5 * attempt)
        for point in mounts_under(directory):
            run([*root, "umount", "--lazy", point], log, check=False, timeout=60)
        if loops:
            _detach_loops_under(directory, log, root)
        run([*root, "rm", "-rf", "--one-file-system", str(directory)], log, check=False, timeout=600)
    if directory.exists():
        log.event(f"could not remove the build folder {directory}; remove it by hand")


def remove_stale_build_dirs(cache: Path, pattern: str, log: Log, root: list[str], *, loops: bool = False) -> None:
    """Build folders of a process killed while building (SIGKILL, power loss).

    Call it holding the build's lock: nobody is using them then.
    """
    for stale in cache.glob(pattern):
        if stale.is_dir():
            log.event(f"removing the stale build folder {stale}")
            remove_build_dir(stale, log, root, loops=loops)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()
