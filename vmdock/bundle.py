"""Offline bundles: one file with everything some labs need on a host with no network.

``export`` streams each member (``docker save`` → zstd → the tar; cached files
→ the tar) and hashes it on the way, so memory stays bounded whatever the
size; the file appears under its name only once complete.

``import`` first hashes every member against the manifest (one sequential
pass) and refuses a damaged, truncated or foreign bundle before touching
anything.  Then it unpacks the files into a staging folder inside the cache
(the same filesystem), ``docker load``s the images, and only then renames the
staged files into place; a failure on the way removes the images it loaded and
the staging folder.  Whatever is present already (same image IDs, same file
contents) is left alone, so a second import does nothing.
"""
from __future__ import annotations

import datetime as _dt
import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import __version__, needs, paths
from .bundle_manifest import (
    CHUNK,
    DEFAULT_LEVEL,
    MANIFEST,
    BundleReader,
    BundleWriter,
    Manifest,
    Member,
    copy_file,
)
from .bundle_sources import Plan, Source, lab_fingerprint, plan
from .errors import BundleError, CommandError, LabError, tail
from .events import Events
from .hostbuild import fsutil
from .loader import LoadedLab, resolve
from .providers.libvirt import vagrant_plugin_installed
from .runlog import Log, quote, run
from .settings import Settings


def log_file() -> Log:
    return Log(paths.cache_dir() / "bundle.log")


# -- export -------------------------------------------------------------------------------


def export(out: Path, labs: list[LoadedLab], settings: Settings, events: Events, log: Log,
           level: int = DEFAULT_LEVEL) -> Manifest:
    """Write the bundle for ``labs`` to ``out`` (replaced only once complete)."""
    found = plan(labs, settings, log)
    for note in found.notes + [n for e in found.labs for n in e.notes]:
        events.info(note)
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    try:
        with open(part, "wb") as fh:
            manifest = _write(BundleWriter(fh, level), found, events, log)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.event(f"bundle {out}: {len(manifest.members)} members, {out.stat().st_size} bytes")
    return manifest


def _write(writer: BundleWriter, found: Plan, events: Events, log: Log) -> Manifest:
    members = []
    for src in found.sources:
        what = f"bundle {src.member}"
        events.task(what)
        start = time.monotonic()
        written = writer.add(src.member, src.compression, _producer(src, log))
        events.task_done(what, time.monotonic() - start)
        events.info(f"{src.member}: {written.raw_size / 1e6:.0f} MB → {written.size / 1e6:.0f} MB")
        members.append(Member(path=src.member, kind=src.kind, target=src.target if src.kind != "docker-images" else "",
                              compression=src.compression, images=src.refs, meta=src.meta, **written.model_dump()))
    manifest = Manifest(
        vmdock_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        members=members, labs=found.labs, notes=found.notes,
    )
    data = manifest.model_dump_json(indent=2).encode()
    writer.add(MANIFEST, "none", lambda w: w.write(data))
    writer.close()
    return manifest


def _producer(src: Source, log: Log) -> Callable:
    if src.path is not None:
        return copy_file(src.path)
    return lambda w: _stream_from(["docker", "save", *(r.ref for r in src.refs)], w, log)


# -- inspect ------------------------------------------------------------------------------


def read_manifest(path: Path) -> Manifest:
    """The manifest, without reading the members (seeks from header to header)."""
    with BundleReader(path) as reader:
        return reader.manifest()


# -- import -------------------------------------------------------------------------------


@dataclass
class Outcome:
    member: Member
    status: str  # "already present", "loaded", "imported"
    note: str = ""


def destination(m: Member) -> Path | None:
    """Where a file member lands (None: docker images)."""
    cache = paths.cache_dir()
    return {"rootfs": cache / m.target, "box": cache / "boxes" / m.target,
            "image-tarball": needs.bundle_images_dir() / m.target}.get(m.kind)


def lab_notes(manifest: Manifest, labs_dirs: list[Path] | None = None) -> list[str]:
    """The bundle's labs that this host lacks or has in another version (their lab images then go unused)."""
    notes = []
    for entry in manifest.labs:
        try:
            here = lab_fingerprint(resolve(entry.name, labs_dirs))
        except LabError:
            notes.append(f"lab {entry.name} is not on this host (`vmdock list`): its images are loaded, unused")
            continue
        if here != entry.fingerprint:
            notes.append(f"lab {entry.name} here differs from the one the bundle was made for "
                         f"(vmdock {manifest.vmdock_version}): its lab images may be built anew")
    return notes


def import_bundle(path: Path, events: Events, log: Log) -> list[Outcome]:
    """Check every member, then load and place them; all or nothing."""
    with BundleReader(path) as reader:
        manifest = reader.manifest()
        events.task("checking every member's checksum")
        start = time.monotonic()
        reader.verify(manifest, on_member=lambda m: events.line("bundle", f"checking {m.path}"))
        events.task_done("checking every member's checksum", time.monotonic() - start)
        cache = paths.cache_dir()
        with fsutil.file_lock(cache / "bundle-import.lock", "a bundle import", log):
            staging = Path(tempfile.mkdtemp(prefix=".bundle-import.", dir=cache))
            loaded: list[str] = []
            try:
                outcomes = _import_members(reader, manifest, staging, loaded, events, log)
            except BaseException:
                _rollback(loaded, log)
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    for o in outcomes:
        if o.member.kind == "box" and o.status == "imported":
            o.note = _register_box(o.member, log)
    return outcomes


def _import_members(reader: BundleReader, manifest: Manifest, staging: Path, loaded: list[str],
                    events: Events, log: Log) -> list[Outcome]:
    outcomes: list[Outcome] = []
    staged: list[tuple[Member, Path]] = []
    for m in manifest.members:
        if _present(m, log):
            outcomes.append(Outcome(m, "already present"))
        elif m.kind != "docker-images":
            _phase(events, f"unpack {m.target}", functools.partial(_unpack, reader, m, staging / m.target))
            staged.append((m, staging / m.target))
    for m in manifest.members:
        if m.kind == "docker-images" and not any(o.member is m for o in outcomes):
            loaded += [r.ref for r in m.images if not _image_id(r.ref, log)]  # rolled back on failure
            with reader.open_raw(m) as raw:
                _phase(events, "docker load", lambda: _stream_into(["docker", "load"], raw, log))
            outcomes.append(Outcome(m, "loaded"))
    for m, tmp in staged:
        _commit(m, tmp)
        outcomes.append(Outcome(m, "imported"))
    return sorted(outcomes, key=lambda o: manifest.members.index(o.member))


def _phase(events: Events, name: str, work: Callable[[], object]) -> None:
    events.task(name)
    start = time.monotonic()
    work()
    events.task_done(name, time.monotonic() - start)


def _present(m: Member, log: Log) -> bool:
    if m.kind == "docker-images":
        return all(_image_id(r.ref, log) == r.id for r in m.images)
    dest = destination(m)
    if dest is None or not dest.is_file() or dest.stat().st_size != m.raw_size:
        return False
    return _sha256(dest) == m.raw_sha256


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _image_id(ref: str, log: Log) -> str:
    result = run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], log, check=False, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else ""


def _unpack(reader: BundleReader, m: Member, target: Path) -> None:
    h = hashlib.sha256()
    try:
        with reader.open_raw(m) as raw, open(target, "wb") as out:
            for block in iter(lambda: raw.read(CHUNK), b""):
                h.update(block)
                out.write(block)
    except OSError as exc:  # zstd errors are OSErrors too
        raise BundleError(f"{reader.path}: member {m.path}: cannot unpack to {target.parent}: {exc}") from exc
    if h.hexdigest() != m.raw_sha256:
        raise BundleError(f"{reader.path}: member {m.path} unpacks to other content than was bundled")


def _commit(m: Member, staged: Path) -> None:
    """Move a staged file (and its ``.json`` sidecar) into the cache, each with one rename."""
    dest = destination(m)
    assert dest is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = None
    if m.meta:
        st = staged.stat()  # the rename keeps it: the sidecar matches the file, no new hash
        sidecar = staged.with_name(staged.name + ".json")
        sidecar.write_text(json.dumps({**m.meta, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
                                      indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _move(staged, dest)
    if sidecar is not None:
        _move(sidecar, dest.with_name(dest.name + ".json"))


def _move(src: Path, dest: Path) -> None:
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # a cache folder on another filesystem: copy beside, then rename
            raise
        part = dest.with_name(f".{dest.name}.part")
        shutil.copy2(src, part)
        os.replace(part, dest)


def _rollback(refs: list[str], log: Log) -> None:
    for ref in refs:
        run(["docker", "rmi", ref], log, check=False, timeout=120)


def _register_box(m: Member, log: Log) -> str:
    dest = destination(m)
    name = m.meta.get("name")
    if not name:
        return f"left in the cache at {dest} (its sidecar names no box)"
    if not (shutil.which("vagrant") and vagrant_plugin_installed("vagrant-libvirt")):
        return f"left in the cache at {dest}: vagrant-libvirt is not installed here (`vmdock box build` registers it)"
    from .driver import vagrant_env

    try:
        provider = m.meta.get("provider", "libvirt")
        run(["vagrant", "box", "add", "--force", "--name", name, "--provider", provider, str(dest)],
            log, env=vagrant_env(), timeout=1800)
    except CommandError as exc:
        why = (exc.stderr_tail.splitlines() or [exc.message])[-1]
        return f"left in the cache at {dest}: vagrant box add failed ({why}); log: {log.path}"
    return f"registered with Vagrant as {name}"


# -- streaming external commands ------------------------------------------------------------


def _stream_from(cmd: list[str], sink, log: Log) -> None:
    """Copy the stdout of ``cmd`` into ``sink`` block by block."""
    text, start = quote(cmd), time.monotonic()
    log.event(f"host$ {text}  (started)")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            for block in iter(lambda: proc.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                sink.write(block)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        err.seek(0)
        errors = err.read().decode("utf-8", "replace")
    _finish(text, start, code, errors, log)


def _stream_into(cmd: list[str], source: IO[bytes], log: Log) -> None:
    """Feed ``source`` to the stdin of ``cmd`` block by block."""
    text, start = quote(cmd), time.monotonic()
    log.event(f"host$ {text}  (started)")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        try:
            for block in iter(lambda: source.read(CHUNK), b""):
                proc.stdin.write(block)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it stopped reading: its exit code and output say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    _finish(text, start, code, output, log)


def _finish(text: str, start: float, code: int, output: str, log: Log) -> None:
    log.command("host", text, time.monotonic() - start, code)
    for line in output.splitlines():
        log.write(f"    {line}")
    if code != 0:
        raise CommandError(f"{text.split()[0]} {text.split()[1]} failed", command=text, exit_code=code,
                           stderr_tail=tail(output), log=log.path)
