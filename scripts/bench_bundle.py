#!/usr/bin/env python3
"""Benchmark `vmdock bundle export` and `import` with the real machine image and rootfs.

    python scripts/bench_bundle.py                 # ch6-lamp, caches copied from $VMDOCK_CACHE
    python scripts/bench_bundle.py --compare       # also zstd levels vs gzip on the same data
    python scripts/bench_bundle.py ch10-registry --from-cache /var/tmp/vmdock-dev/cache --json

The rootfs tarball and the boxes are copied from the source cache into a
temporary cache (the source is only read).  The docker provider's machine image
cannot be removed to time its `docker load` (other labs use it), so the bench
bundles a copy of it: a container of the machine image, `docker export`ed and
`docker import`ed as `vmdock-bench/machine:<run>` (one layer, the same files)
and labelled as the only machine image for the run.  The copy is removed before
the import (so `docker load` really loads it) and again at the end.

Prints the size of the bundle, the time of each member's export, of the checksum
pass and of each member's import, and of a second, no-op import.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmdock import bundle, paths  # noqa: E402 (after the path insert)
from vmdock.events import Events  # noqa: E402
from vmdock.hostbuild import machine_image as mi  # noqa: E402
from vmdock.hostbuild import rootfs as rf  # noqa: E402
from vmdock.loader import resolve  # noqa: E402
from vmdock.settings import Settings  # noqa: E402

BENCH_ROLE = "vmdock.role=vmdock-bench-machine-image"
CHUNK = 1 << 20


class Timings(Events):
    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    def task_done(self, name: str, seconds: float) -> None:
        self.rows.append((name, seconds))


def docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, **kw)


def machine_image(rootfs: Path) -> str:
    """The machine image `vmdock up` uses with this rootfs (else any)."""
    fmt = "{{.Repository}}:{{.Tag}}"
    refs = docker("image", "ls", "--filter", f"label={mi.ROLE_LABEL}", "--format", fmt).stdout.split()
    if not refs:
        sys.exit("no machine image here: `vmdock box build --provider docker` first")
    current = mi.machine_image_tag()
    return current if current in refs else refs[0]


def copy_machine_image(source: str, ref: str) -> None:
    """``ref``: the files of ``source`` as one layer, with the bench's role label."""
    container = docker("create", source, "true").stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "--change", f"LABEL {BENCH_ROLE}", "-", ref],
                       stdin=export.stdout, check=True, capture_output=True)
        export.wait()
    finally:
        docker("rm", container)


def compare(tmp: Path, ref: str, rootfs: Path) -> list[dict]:
    """Size, compress and decompress time of zstd levels and gzip on the image and the unpacked rootfs."""
    saved, raw_rootfs = tmp / "image.tar", tmp / "rootfs.tar"
    docker("save", "-o", str(saved), ref)
    with gzip.open(rootfs) as src, open(raw_rootfs, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    rows = []
    for data in (saved, raw_rootfs):
        for name, comp, decomp in _codecs():
            packed = tmp / "packed"
            start = time.monotonic()
            with open(data, "rb") as src, open(packed, "wb") as out:
                comp(src, out)
            c = time.monotonic() - start
            start = time.monotonic()
            with open(packed, "rb") as src:
                decomp(src)
            d = time.monotonic() - start
            rows.append({"data": data.name, "raw_mb": round(data.stat().st_size / 1e6, 1), "codec": name,
                         "mb": round(packed.stat().st_size / 1e6, 1),
                         "compress_s": round(c, 2), "decompress_s": round(d, 2)})
    return rows


def _codecs():
    def zstd(level):
        def comp(src, out):
            zstandard.ZstdCompressor(level=level, write_checksum=True).copy_stream(src, out)

        def decomp(src):
            reader = zstandard.ZstdDecompressor().stream_reader(src)
            while reader.read(CHUNK):
                pass
        return f"zstd -{level}", comp, decomp

    def gz(level):
        def comp(src, out):
            z = zlib.compressobj(level, zlib.DEFLATED, 31)
            for block in iter(lambda: src.read(CHUNK), b""):
                out.write(z.compress(block))
            out.write(z.flush())

        def decomp(src):
            z = zlib.decompressobj(31)
            for block in iter(lambda: src.read(CHUNK), b""):
                z.decompress(block)
        return f"gzip -{level}", comp, decomp

    return [zstd(1), zstd(3), zstd(6), zstd(9), gz(1), gz(6)]  # zstd -19: 200 s for the image, 49 MB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labs", nargs="*", default=["ch6-lamp"])
    ap.add_argument("--from-cache", type=Path, default=Path(os.environ.get("VMDOCK_CACHE") or paths.cache_dir()))
    ap.add_argument("--level", type=int, default=bundle.DEFAULT_LEVEL)
    ap.add_argument("--compare", action="store_true", help="also compare zstd levels and gzip on the same data")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vmdock-bench-bundle-", dir="/var/tmp"))
    teacher, student = tmp / "teacher", tmp / "student"
    (teacher / "boxes").mkdir(parents=True)
    for f in list(args.from_cache.glob("rootfs-*.tar.gz*")) + list(args.from_cache.glob("boxes/*.box*")):
        shutil.copy2(f, teacher / f.relative_to(args.from_cache))
    ref = f"vmdock-bench/machine:{uuid.uuid4().hex[:8]}"
    source = machine_image(teacher / rf.rootfs_path().name)
    os.environ.update(VMDOCK_HOME=str(tmp / "home"), VAGRANT_HOME=str(tmp / "vagrant.d"))
    mi.ROLE_LABEL = BENCH_ROLE  # the copy is the machine image of this run
    report: dict = {"labs": args.labs, "machine_image": f"{source} (bundled as a one-layer copy)", "level": args.level}
    try:
        copy_machine_image(source, ref)
        labs = [resolve(name) for name in args.labs]
        os.environ["VMDOCK_CACHE"] = str(teacher)
        out, events = tmp / "class.vmdock", Timings()
        start = time.monotonic()
        bundle.export(out, labs, Settings.from_env(), events, bundle.log_file(), level=args.level)
        report["export"] = {"seconds": round(time.monotonic() - start, 1), "phases": events.rows}
        report["bundle_mb"] = round(out.stat().st_size / 1e6, 1)
        docker("rmi", ref)
        os.environ["VMDOCK_CACHE"] = str(student)
        for run in ("import", "import again"):
            events = Timings()
            start = time.monotonic()
            outcomes = bundle.import_bundle(out, events, bundle.log_file())
            report[run] = {"seconds": round(time.monotonic() - start, 1), "phases": events.rows,
                           "members": [f"{o.status}: {o.member.path}" for o in outcomes]}
        if args.compare:
            report["compare"] = compare(tmp, ref, next(teacher.glob("rootfs-*.tar.gz")))
    finally:
        subprocess.run(["docker", "rmi", "-f", ref], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"labs {' '.join(args.labs)}; machine image {report['machine_image']}; zstd level {args.level}")
    print(f"bundle: {report['bundle_mb']} MB")
    for run in ("export", "import", "import again"):
        print(f"{run}: {report[run]['seconds']} s")
        for name, seconds in report[run]["phases"]:
            print(f"    {name}: {seconds:.1f} s")
    for row in report.get("compare", []):
        print("    {data} ({raw_mb} MB) {codec}: {mb} MB, compress {compress_s} s, "
              "decompress {decompress_s} s".format(**row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
