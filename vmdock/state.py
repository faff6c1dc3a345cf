"""Per-lab state: machines, SSH settings, steps done, secrets, last error.

Lives in ``<vmdock home>/labs/<lab>/state.json``, written atomically.  Steps
are recorded with a fingerprint that chains the fingerprint of the step
before it, so a change to one step (its definition or its files) makes it
and every later step run again, and nothing before it.  One process at a
time holds a lab (``lab_lock``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets as _secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import settings
from .errors import BusyError, StateError
from .lifecycle import Phase, advance

STATE_VERSION = 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class LabState:
    path: Path
    lab: str
    provider: str | None = None
    lab_folder: str | None = None
    network: str | None = None  # the instance's private network, leased host-wide (seats)
    port_offset: int = 0  # the seat's forwarded host ports are the lab's plus this
    machines: dict[str, dict] = field(default_factory=dict)  # name → {"id":…, "ssh": {…}}
    steps: dict[str, dict] = field(default_factory=dict)  # key → {"fingerprint", "seconds", "at"}
    plan: list[str] = field(default_factory=list)  # the step keys of the last plan, in its order
    steps_upto: int | None = None  # the lab's steps `up` was asked for: None all, 0 none (student mode)
    lab_images: dict[str, str] = field(default_factory=dict)  # machine → the lab image it was made from
    secrets: dict[str, str] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)  # images loaded into the machines from --images-dir
    capturing: list[str] = field(default_factory=list)  # machines an `image build` is capturing (put back if killed)
    last_error: dict | None = None
    phase: Phase = Phase.NEW  # lifecycle.TRANSITIONS says how it moves

    def __post_init__(self) -> None:
        self.phase = Phase(self.phase)

    @classmethod
    def load(cls, path: Path, lab: str) -> LabState:
        path = Path(path)
        if not path.exists():
            return cls(path=path, lab=lab)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(
                f"state file {path} is unreadable: {exc}",
                lab=lab,
                hint=f"`vmdock destroy {lab}` or delete that file",
            ) from None
        if data.get("version") != STATE_VERSION:
            raise StateError(f"state file {path} has an unknown version", lab=lab)
        return cls(
            path=path,
            lab=lab,
            provider=data.get("provider"),
            lab_folder=data.get("lab_folder"),
            network=data.get("network"),
            port_offset=int(data.get("port_offset") or 0),
            machines=data.get("machines", {}),
            steps=data.get("steps", {}),
            plan=data.get("plan", []),
            steps_upto=data.get("steps_upto"),
            lab_images=data.get("lab_images", {}),
            secrets=data.get("secrets", {}),
            exports=data.get("exports", {}),
            images=data.get("images", []),
            capturing=data.get("capturing", []),
            last_error=data.get("last_error"),
            phase=_phase(data.get("phase"), path, lab),
        )

    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "lab": self.lab,
            "provider": self.provider,
            "lab_folder": self.lab_folder,
            "network": self.network,
            "port_offset": self.port_offset,
            "phase": Phase(self.phase).value,
            "machines": self.machines,
            "steps": self.steps,
            "plan": self.plan,
            "steps_upto": self.steps_upto,
            "lab_images": self.lab_images,
            "secrets": self.secrets,
            "exports": self.exports,
            "images": self.images,
            "capturing": self.capturing,
            "last_error": self.last_error,
            "updated": _now(),
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the lab's secrets
            with open(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2, ensure_ascii=False, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def move(self, phase: Phase) -> None:
        """Go to ``phase`` (lifecycle.TRANSITIONS must allow it); saved with the next save()."""
        self.phase = advance(self.phase, phase)

    # steps ------------------------------------------------------------------
    def is_done(self, key: str, fingerprint: str) -> bool:
        rec = self.steps.get(key)
        return rec is not None and rec.get("fingerprint") == fingerprint

    def mark_done(self, key: str, fingerprint: str, seconds: float, title: str = "") -> None:
        self.steps[key] = {"fingerprint": fingerprint, "title": title, "seconds": round(seconds, 2), "at": _now()}
        self.last_error = None
        self.save()

    def last_good_step(self) -> str | None:
        """The last step of the plan, in its order, done before the first one not done."""
        done = None
        for key in self.plan:
            if key in self.steps:
                done = key
            else:
                break
        return done

    def ensure_secrets(self, names: list[str]) -> dict[str, str]:
        changed = False
        for n in names:
            given = settings.current().secret(n)  # VMDOCK_SECRET_<n>, e.g. a real registry's password
            if given and self.secrets.get(n) != given:
                self.secrets[n] = given
                changed = True
            elif n not in self.secrets:
                self.secrets[n] = _secrets.token_urlsafe(18)
                changed = True
        if changed:
            self.save()
        return {n: self.secrets[n] for n in names}

    def reset(self) -> None:
        """Forget machines and steps (after destroy); keep nothing but the lab's name."""
        self.machines.clear()
        self.steps.clear()
        self.plan.clear()
        self.lab_images.clear()
        self.steps_upto = None
        self.exports.clear()
        self.images.clear()
        self.secrets.clear()
        self.last_error = None
        self.provider = None
        # the lease goes back to the pool; `network` stays as the block to ask for first next
        # time (lab images hold steps made with its addresses), the port offset stays too
        self.move(Phase.DESTROYED)


def _phase(value, path: Path, lab: str) -> Phase:
    try:
        return Phase(value or Phase.NEW)
    except ValueError:
        raise StateError(f"state file {path} has an unknown phase {value!r}", lab=lab) from None


def fingerprint(previous: str, *parts: str | bytes) -> str:
    h = hashlib.sha256(previous.encode())
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def hash_paths(root: Path, rels: list[str]) -> str:
    """Content hash of lab files (folders recursively), names included."""
    h = hashlib.sha256()
    root = Path(root)
    for rel in sorted(rels):
        p = root / rel
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(f.read_bytes())
            h.update(b"\0" + str(os.stat(f).st_mode & 0o111).encode())
    return h.hexdigest()


@contextlib.contextmanager
def lab_lock(folder: Path, lab: str, action: str) -> Iterator[None]:
    """Hold the lab for one process; refuse clearly if another holds it.

    ``filelock`` (flock on Linux, LockFileEx on Windows) on ``lock``; who holds
    it is written to ``lock.holder`` (the lock file itself is the lock's own).
    A process killed with the lock loses it with its file descriptors.
    """
    import filelock  # with asyncio: not for the commands that only read state (`vmdock list`)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(folder / "lock"), is_singleton=False)
    holder = folder / "lock.holder"
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        try:
            who = holder.read_text(encoding="utf-8").strip()
        except OSError:
            who = ""
        raise BusyError(
            f"lab is busy: {who or 'another vmdock process'}",
            lab=lab,
            hint="wait for it to finish, or stop it (Ctrl-C); its state is kept and the next run resumes",
        ) from None
    try:
        holder.write_text(f"`vmdock {action}` (pid {os.getpid()}) since {_now()}", encoding="utf-8")
        yield
    finally:
        lock.release()
