"""The labs' base image: a debootstrap ``--variant=minbase`` Debian rootfs,
tarred and cached.

The same tarball is uploaded into machines and ``docker import``ed there as
``debian:bookworm``, and is the base the docker machine image is built on, so
it stays a clean minbase (no sshd, no apt lists, no .debs).
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from .. import paths, settings
from ..errors import ConfigError, ProviderError
from ..runlog import Log, run
from . import fsutil
from .debootstrap import MIRROR_ENV, LineSink, debootstrap

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"

#: gzip, measured on bookworm minbase: 49 MB against 121 MB of plain tar
#: (zstd -3: 85 MB, and not every docker import reads it).  The upload into
#: every machine pays for size (paramiko SFTP over loopback: 0.45 s vs 0.8 s;
#: far more over a VM's NAT link); `docker import` un-gzips at ~80 MB/s
#: (1.6 s vs 0.9 s), and the 4 s to compress are paid once, when cached.
ROOTFS_SUFFIX = ".tar.gz"

_ARCHES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "armhf", "i386": "i386", "i686": "i386", "ppc64le": "ppc64el",
    "s390x": "s390x", "riscv64": "riscv64",
}

# Inside the fresh rootfs: drop what debootstrap leaves behind that an image
# should not carry (downloaded .debs, apt lists, the host's hostname and
# resolv.conf, logs).  Docker provides /etc/hostname, /etc/hosts and
# /etc/resolv.conf at run time.
_ROOTFS_CLEANUP = r"""
set -e
cd "$1"
rm -f var/cache/apt/archives/*.deb var/cache/apt/archives/partial/*.deb var/cache/apt/*.bin
rm -rf var/lib/apt/lists/*
mkdir -p var/lib/apt/lists/partial
rm -rf debootstrap
rm -f var/log/bootstrap.log var/log/alternatives.log var/log/dpkg.log var/log/apt/*.log
: > etc/resolv.conf
rm -f etc/hostname
if [ -s etc/machine-id ]; then : > etc/machine-id; fi
rm -rf tmp/* var/tmp/*
"""


def apt_mirror(mirror: str | None = None) -> str:
    """The Debian mirror: the argument, else $VMDOCK_APT_MIRROR, else deb.debian.org."""
    if not mirror:
        return settings.current().apt_mirror or DEFAULT_MIRROR
    try:
        return settings.check_url(mirror, ("http", "https", "file"))
    except ValueError as exc:
        raise ConfigError(
            f"invalid Debian mirror: {exc}",
            hint=f"give an http(s):// or file:// URL, e.g. {DEFAULT_MIRROR} (option or ${MIRROR_ENV})",
        ) from None


def debian_arch() -> str:
    """The Debian architecture name of this host (amd64, arm64, ...)."""
    machine = platform.machine().lower()
    if machine in _ARCHES:
        return _ARCHES[machine]
    dpkg = shutil.which("dpkg")
    if dpkg:
        out = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    raise ProviderError(f"unknown machine architecture {machine!r}", hint="vmdock supports amd64 and arm64 hosts")


def rootfs_path(suite: str = DEFAULT_SUITE, arch: str | None = None) -> Path:
    """Where the rootfs tarball of ``suite`` is cached (it may not exist yet)."""
    return paths.cache_dir() / f"rootfs-{suite}-{arch or debian_arch()}{ROOTFS_SUFFIX}"


def rootfs_meta(tarball: Path) -> dict:
    """What is known about a cached rootfs tarball (its ``.json`` sidecar).

    Always has ``sha256``, ``size`` and ``mtime_ns`` matching the file on
    disk: the sidecar is rewritten when the tarball was replaced behind our
    back.  ``mirror``, ``suite``, ``arch`` and ``built_at`` are there when
    vmdock built it.
    """
    meta = fsutil.read_sidecar(tarball)
    st = tarball.stat()
    if meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns and meta.get("sha256"):
        return meta
    meta.update(sha256=fsutil.sha256_file(tarball), size=st.st_size, mtime_ns=st.st_mtime_ns)
    try:
        fsutil.write_sidecar(tarball, meta)
    except OSError:
        pass  # a read-only cache: computed again next time
    return meta


def rootfs_tarball(
    log: Log,
    *,
    mirror: str | None = None,
    suite: str = DEFAULT_SUITE,
    on_line: LineSink | None = None,
) -> Path:
    """A cached debootstrap ``--variant=minbase`` rootfs of Debian ``suite``.

    Built from ``mirror`` (default: $VMDOCK_APT_MIRROR, else deb.debian.org)
    the first time, tarred (gzip) and cached as
    ``cache_dir()/rootfs-<suite>-<arch>.tar.gz``.  The cache is keyed by suite
    and architecture only: a later call with another mirror reuses it (its
    ``/etc/apt/sources.list`` names the mirror it was built from; see
    ``rootfs_meta()['mirror']``).  Two processes never build at once; the
    temporary rootfs is removed even on failure or Ctrl-C.
    """
    if not re.match(r"^[a-z][a-z0-9-]*$", suite):
        raise ConfigError(f"invalid Debian suite {suite!r}", hint="e.g. bookworm")
    mirror = apt_mirror(mirror)
    arch = debian_arch()
    target = rootfs_path(suite, arch)
    if target.is_file():
        log.event(f"rootfs {suite}/{arch}: cached {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with fsutil.file_lock(target.parent / f"rootfs-{suite}-{arch}.lock", f"the {suite} rootfs", log):
        if target.is_file():  # another process built it while we waited
            log.event(f"rootfs {suite}/{arch}: built meanwhile by another process: {target}")
            return target
        _build(log, target, suite=suite, arch=arch, mirror=mirror, on_line=on_line)
    return target


def _build(log: Log, target: Path, *, suite: str, arch: str, mirror: str, on_line: LineSink | None) -> None:
    """debootstrap into a temporary folder beside ``target``, clean, tar, publish."""
    root = fsutil.root_prefix("building the Debian rootfs")
    cache = target.parent
    fsutil.remove_stale_build_dirs(cache, f".rootfs-{suite}-{arch}.*", log, root)
    build_dir = cache / f".rootfs-{suite}-{arch}.{os.getpid()}"
    build_dir.mkdir(mode=0o755)
    rootfs = build_dir / "rootfs"
    part = build_dir / target.name
    started = time.monotonic()
    try:
        log.event(f"rootfs {suite}/{arch}: debootstrap --variant=minbase from {mirror}")
        seconds = debootstrap(log, rootfs, suite=suite, mirror=mirror, arch=arch, root=root,
                              step="rootfs", on_line=on_line)
        run([*root, "sh", "-c", _ROOTFS_CLEANUP, "sh", str(rootfs)], log, timeout=300)
        # --one-file-system: never pack a mount debootstrap left behind.
        run(
            [*root, "tar", "--numeric-owner", "--one-file-system", "--sort=name",
             "-C", str(rootfs), "-czf", str(part), "."],
            log, timeout=1200,
        )
        if root:
            run([*root, "chown", f"{os.getuid()}:{os.getgid()}", str(part)], log, timeout=60)
        st = part.stat()
        meta = {
            "suite": suite, "arch": arch, "mirror": mirror, "variant": "minbase",
            "built_at": fsutil.utc_now(),
            "debootstrap_seconds": round(seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "sha256": fsutil.sha256_file(part),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,  # os.replace keeps it
        }
        fsutil.write_sidecar(target, meta)
        os.replace(part, target)
        log.event(
            f"rootfs {suite}/{arch}: built {target} ({st.st_size / 1e6:.0f} MB) "
            f"in {meta['total_seconds']:.0f}s (debootstrap {seconds:.0f}s)"
        )
    finally:
        fsutil.remove_build_dir(build_dir, log, root)
