"""The bundle file: an uncompressed tar of members, each compressed on its own, and a manifest.

Layout (``vmdock bundle export``)::

    members/docker-images.tar.zst          `docker save` of the host's images, zstd
    members/rootfs-bookworm-amd64.tar.gz   stored as it is (gzip already)
    members/debian12-libvirt-amd64.box.zst
    members/images/mongo-7.tar.zst         a `docker save` tarball an online lab needs
    manifest.json                          last: written once every member is hashed

The outer tar is not compressed, so ``inspect`` finds the manifest by seeking
from header to header, and an import hashes every member in one sequential
pass before anything is loaded.  A member is streamed into the tar: its header
is written with size 0, the data follows (compressed and hashed on the fly),
then the header is rewritten with the real size.  GNU tar headers keep sizes
over 8 GiB in the same 512-byte block, so the rewrite never shifts the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal, cast

import zstandard
from pydantic import BaseModel, ValidationError, field_validator
from typing_extensions import Self

from .errors import BundleError

FORMAT = "vmdock-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: zstd level 3: on the machine image (`docker save`, 182 MB) it makes 62 MB in 1.5 s and
#: unpacks in 0.3 s; level 9 saves 7 MB for 5x the time; gzip -6 makes 77 MB in 27 s and
#: unpacks in 1.8 s (`scripts/bench_bundle.py --compare`, README "Offline bundle").
DEFAULT_LEVEL = 3
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

Kind = Literal["docker-images", "rootfs", "box", "image-tarball"]
Compression = Literal["zstd", "none"]


class ImageRef(BaseModel):
    ref: str
    id: str = ""  # the image ID dockerd gave it (docker-images members)


class Member(BaseModel):
    path: str  # inside the bundle
    kind: Kind
    target: str = ""  # file name where it lands (rootfs, box, image-tarball)
    compression: Compression
    sha256: str  # of the bytes stored in the bundle
    size: int
    raw_sha256: str  # of the content once unpacked
    raw_size: int
    images: list[ImageRef] = []
    meta: dict = {}  # the cached file's .json sidecar

    @field_validator("target")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if v and not _SAFE_NAME.match(v):
            raise ValueError(f"{v!r} is not a plain file name")
        return v


class LabEntry(BaseModel):
    name: str
    fingerprint: str  # content hash of the lab folder
    lab_images: list[str] = []
    needs_images: list[str] = []
    notes: list[str] = []


class Manifest(BaseModel):
    format: Literal["vmdock-bundle"] = "vmdock-bundle"
    format_version: int = FORMAT_VERSION
    vmdock_version: str
    created: str
    members: list[Member]
    labs: list[LabEntry]
    notes: list[str] = []


# -- writing ------------------------------------------------------------------------------


class _Hashing:
    """A write-only file that hashes and counts what passes through to ``out``."""

    def __init__(self, out: Any):  # a file, a zstd stream writer, another _Hashing
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)


class Written(BaseModel):
    sha256: str
    size: int
    raw_sha256: str
    raw_size: int


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    buf = info.tobuf(format=tarfile.GNU_FORMAT)
    if len(buf) != _BLOCK:  # long names would add blocks and shift the data on rewrite
        raise BundleError(f"bundle member name too long: {name}")
    return buf


class _OpenFile:
    """A reader that holds ``self.fh`` open until ``close`` (or the end of a ``with``)."""

    fh: IO[bytes]

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BundleWriter:
    """Appends members to an open, seekable file; ``close`` ends the tar."""

    def __init__(self, fh: IO[bytes], level: int = DEFAULT_LEVEL):
        self.fh, self.level = fh, level

    def add(self, name: str, compression: Compression, produce: Callable[[_Hashing], object]) -> Written:
        """``produce(w)`` writes the raw content to ``w`` in chunks; it is compressed and hashed on the way."""
        start = self.fh.tell()
        self.fh.write(b"\0" * _BLOCK)
        stored = _Hashing(self.fh)
        if compression == "zstd":
            cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
            with cctx.stream_writer(cast(IO[bytes], stored), closefd=False) as zw:
                raw = _Hashing(zw)
                produce(raw)
        else:
            raw = _Hashing(stored)
            produce(raw)
        self.fh.write(b"\0" * (-stored.size % _BLOCK))
        end = self.fh.tell()
        self.fh.seek(start)
        self.fh.write(_header(name, stored.size))
        self.fh.seek(end)
        return Written(sha256=stored.sha.hexdigest(), size=stored.size,
                       raw_sha256=raw.sha.hexdigest(), raw_size=raw.size)

    def close(self) -> None:
        self.fh.write(b"\0" * (2 * _BLOCK))


def copy_file(path: Path) -> Callable[[_Hashing], object]:
    def produce(w: _Hashing) -> None:
        with open(path, "rb") as src:
            for block in iter(lambda: src.read(CHUNK), b""):
                w.write(block)
    return produce


# -- reading ------------------------------------------------------------------------------


class BundleReader(_OpenFile):
    """The members of a bundle file, found header by header (no data read)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.fh = open(self.path, "rb")  # held by the reader, closed by close()
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot read ({exc.strerror})") from exc
        self.entries: dict[str, tarfile.TarInfo] = {}
        self.size = os.fstat(self.fh.fileno()).st_size
        self.last: tarfile.TarInfo | None = None
        try:
            with tarfile.open(fileobj=self.fh, mode="r:") as tar:
                for info in tar:
                    self.last = info
                    if info.offset_data + info.size > self.size:
                        raise BundleError(f"{self.path}: truncated inside member {info.name} "
                                          f"({self.size - info.offset_data} of {info.size} bytes)")
                    self.entries[info.name] = info
        except tarfile.TarError as exc:
            after = f" after member {self.last.name}" if self.last else ""
            raise BundleError(f"{self.path}: not a vmdock bundle, or damaged{after}: {exc}") from exc


    def _span(self, name: str) -> tuple[int, int]:
        info = self.entries[name]
        return info.offset_data, info.size

    def _unread_tail(self) -> int:
        """Where data that tarfile stopped before begins (a damaged header), else -1."""
        end = 0 if self.last is None else self.last.offset_data + self.last.size + (-self.last.size % _BLOCK)
        self.fh.seek(end)
        rest = self.fh.read(2 * _BLOCK)  # the end-of-archive marker is zeros
        return end if rest.strip(b"\0") else -1

    def manifest(self) -> Manifest:
        hint = "nothing was imported; copy the bundle again, or make it anew with `vmdock bundle export`"
        if MANIFEST not in self.entries:
            at = self._unread_tail()
            if at >= 0 and self.last is not None:
                raise BundleError(f"{self.path}: damaged header at byte {at}, after member {self.last.name}", hint=hint)
            raise BundleError(f"{self.path}: no {MANIFEST}: the file is truncated or not a vmdock bundle", hint=hint)
        offset, size = self._span(MANIFEST)
        self.fh.seek(offset)
        try:
            data = json.loads(self.fh.read(size))
        except ValueError as exc:
            raise BundleError(f"{self.path}: {MANIFEST} is damaged: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{self.path}: not a vmdock bundle ({MANIFEST} has no format {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{self.path}: bundle format version {data.get('format_version')!r}, "
                f"this vmdock reads version {FORMAT_VERSION}",
                hint=f"use the vmdock that made it (vmdock {data.get('vmdock_version', '?')})",
            )
        try:
            return Manifest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BundleError(f"{self.path}: {MANIFEST}: {where}: {first['msg']}") from exc

    def verify(self, manifest: Manifest, on_member: Callable[[Member], None] | None = None) -> None:
        """Hash every member against the manifest; raise naming the first bad or missing one."""
        listed = {m.path for m in manifest.members}
        for m in manifest.members:
            if m.path not in self.entries:
                raise BundleError(f"{self.path}: member {m.path} is missing (the manifest lists it)")
        extra = sorted(set(self.entries) - listed - {MANIFEST})
        if extra:
            raise BundleError(f"{self.path}: member {extra[0]} is not in the manifest")
        for m in sorted(manifest.members, key=lambda m: self._span(m.path)[0]):  # one pass, in file order
            if on_member:
                on_member(m)
            offset, size = self._span(m.path)
            h = hashlib.sha256()
            self.fh.seek(offset)
            left = size
            while left:
                block = self.fh.read(min(CHUNK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            if size != m.size or h.hexdigest() != m.sha256:
                raise BundleError(f"{self.path}: member {m.path} is damaged (checksum mismatch)",
                                  hint="nothing was imported; copy the bundle again")

    def open_raw(self, m: Member) -> IO[bytes]:
        """The member's content, unpacked while read (bounded memory)."""
        offset, size = self._span(m.path)
        stored = _Slice(self.path, offset, size)
        if m.compression == "zstd":
            return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], stored), closefd=True))
        return cast(IO[bytes], stored)


class _Slice(_OpenFile):
    """A read-only file over ``size`` bytes of ``path`` from ``offset``."""

    def __init__(self, path: Path, offset: int, size: int):
        self.fh = open(path, "rb")  # held by the slice, closed by close()
        self.fh.seek(offset)
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self.fh.read(n)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True

