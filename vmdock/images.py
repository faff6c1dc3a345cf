"""Images vmdock builds itself, offline, with no registry.

* ``rootfs_tarball``: a debootstrap ``--variant=minbase`` Debian rootfs, tarred
  and cached.  The same tarball is uploaded into machines and ``docker
  import``ed there as the lab base image ``debian:bookworm``, so it stays a
  clean minbase (no sshd, no apt lists, no .debs).
* ``ensure_machine_image``: the image of Vagrant *docker provider* machines,
  containers that stand in for VMs: sshd as the main process, user
  ``vagrant`` with Vagrant's insecure key and passwordless sudo, able to run
  their own dockerd (see ``machine_create_args``).
* ``machine_create_args``: the ``docker create`` arguments that let such a
  machine run dockerd on this host, with or without ``--privileged``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

from . import paths
from .errors import BusyError, CommandError, ConfigError, ProviderError, tail
from .runlog import Log, run

LineSink = Callable[[str], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "VMDOCK_APT_MIRROR"
DEFAULT_SUITE = "bookworm"
#: Debian suite -> the name used in image tags.
SUITE_LABELS = {"bullseye": "debian11", "bookworm": "debian12", "trixie": "debian13"}

MACHINE_TEMPLATE_DIR = paths.TEMPLATES_DIR / "machine"
MACHINE_DOCKERFILE = MACHINE_TEMPLATE_DIR / "Dockerfile"
MACHINE_IMAGE_REPO = "vmdock/machine"
ROOTFS_IMPORT_REPO = "vmdock/rootfs-import"
ROLE_LABEL_KEY = "vmdock.role"
ROLE_LABEL_VALUE = "machine-image"
ROLE_LABEL = f"{ROLE_LABEL_KEY}={ROLE_LABEL_VALUE}"

#: gzip, measured on bookworm minbase: 49 MB against 121 MB of plain tar
#: (zstd -3: 85 MB, and not every docker import reads it).  The upload into
#: every machine pays for size (paramiko SFTP over loopback: 0.45 s vs 0.8 s;
#: far more over a VM's NAT link); `docker import` un-gzips at ~80 MB/s
#: (1.6 s vs 0.9 s), and the 4 s to compress are paid once, when cached.
ROOTFS_SUFFIX = ".tar.gz"

#: ``docker create`` arguments for a machine that runs its own dockerd on a
#: host where ``--privileged`` does not work (a capability missing from the
#: daemon's bounding set: SYS_RESOURCE here).  The anonymous volume gives the
#: inner dockerd a real filesystem for overlay2 (overlay on overlay does not
#: work); Vagrant's destroy (``docker rm -f -v``) removes it.
MACHINE_CREATE_ARGS: list[str] = [
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--device-cgroup-rule=a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "-v", "/var/lib/docker",
    "--init",
]
#: The same where ``docker run --privileged`` works.
PRIVILEGED_CREATE_ARGS: list[str] = ["--privileged", "-v", "/var/lib/docker", "--init"]

HOST_FACTS_FILE = "host-facts.json"

_DEBOOTSTRAP_TIMEOUT = 3600
_LOCK_WAIT = 3600
_DOCKER_HINT = (
    "dockerd is not reachable: start it (systemctl start docker, or "
    "`nohup dockerd >/var/log/dockerd.log 2>&1 &`) and make sure this user may use "
    "/var/run/docker.sock (root, or a member of group docker)"
)
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


# --------------------------------------------------------------------------
# small helpers


def apt_mirror(mirror: str | None = None) -> str:
    """The Debian mirror: the argument, else $VMDOCK_APT_MIRROR, else deb.debian.org."""
    value = (mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).strip()
    if not re.match(r"^(https?|file)://[^\s'\"]+$", value):
        raise ConfigError(
            f"invalid Debian mirror {value!r}",
            hint=f"give an http(s):// or file:// URL, e.g. {DEFAULT_MIRROR} (option or ${MIRROR_ENV})",
        )
    return value.rstrip("/")


def debian_arch() -> str:
    """The Debian architecture name of this host (amd64, arm64, ...)."""
    machine = platform.machine().lower()
    known = {
        "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "armv7l": "armhf", "i386": "i386", "i686": "i386", "ppc64le": "ppc64el",
        "s390x": "s390x", "riscv64": "riscv64",
    }
    if machine in known:
        return known[machine]
    dpkg = shutil.which("dpkg")
    if dpkg:
        out = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    raise ProviderError(f"unknown machine architecture {machine!r}", hint="vmdock supports amd64 and arm64 hosts")


def suite_label(suite: str) -> str:
    return SUITE_LABELS.get(suite, suite)


def rootfs_path(suite: str = DEFAULT_SUITE, arch: str | None = None) -> Path:
    """Where the rootfs tarball of ``suite`` is cached (it may not exist yet)."""
    return paths.cache_dir() / f"rootfs-{suite}-{arch or debian_arch()}{ROOTFS_SUFFIX}"


def _meta_path(tarball: Path) -> Path:
    return tarball.with_name(tarball.name + ".json")


def _root_prefix() -> list[str]:
    """Run as root: nothing when we are root, else ``sudo -n`` (never prompts)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    raise ProviderError(
        "building the Debian rootfs needs root",
        hint="run vmdock as root, or allow this user passwordless sudo",
    )


class _Tail:
    """An ``on_line`` that keeps the last lines of stdout *and* stderr.

    ``docker build`` (legacy builder) and debootstrap print the interesting
    error on stdout or mixed with progress; this keeps it for the error.
    """

    def __init__(self, forward: LineSink | None, lines: int = 25):
        self.lines: deque[str] = deque(maxlen=lines)
        self.forward = forward
        self.step_images: list[str] = []  # legacy `docker build`: " ---> 3f2a9c01b7de"

    def __call__(self, line: str) -> None:
        m = re.match(r"^ ---> ([0-9a-f]{12})$", line)
        if m and not (self.lines and "Using cache" in self.lines[-1]):
            self.step_images.append(m.group(1))  # made by this build, not reused
        self.lines.append(line)
        if self.forward:
            self.forward(line)

    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def _file_lock(path: Path, what: str, log: Log, wait: float = _LOCK_WAIT) -> Iterator[None]:
    """An exclusive fcntl lock on ``path``, waiting at most ``wait`` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.event(f"waiting for another vmdock process that is building {what} (lock {path})")
            deadline = time.monotonic() + wait
            while True:
                time.sleep(0.5)
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BusyError(
                            f"another vmdock process has been building {what} for over {wait:.0f}s",
                            hint=f"wait for it, or if none is running remove {path}",
                            log=log.path,
                        ) from None
        yield
    finally:
        fh.close()  # releases the lock


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def rootfs_meta(tarball: Path) -> dict:
    """What is known about a cached rootfs tarball (its ``.json`` sidecar).

    Always has ``sha256``, ``size`` and ``mtime_ns`` matching the file on
    disk: the sidecar is rewritten when the tarball was replaced behind our
    back.  ``mirror``, ``suite``, ``arch`` and ``built_at`` are there when
    vmdock built it.
    """
    meta_file = _meta_path(tarball)
    meta = _read_json(meta_file)
    st = tarball.stat()
    if meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns and meta.get("sha256"):
        return meta
    meta.update(sha256=_sha256(tarball), size=st.st_size, mtime_ns=st.st_mtime_ns)
    with contextlib.suppress(OSError):
        _write_json_atomic(meta_file, meta)
    return meta


# --------------------------------------------------------------------------
# the rootfs


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (deepest first)."""
    prefix = str(directory).rstrip("/")
    found: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 5:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    except OSError:
        pass
    return sorted(set(found), key=len, reverse=True)


def _remove_build_dir(directory: Path, log: Log, root: list[str]) -> None:
    """Unmount what debootstrap left mounted (proc, sys, dev binds) and delete.

    ``rm --one-file-system`` never follows into a mount that survived the
    unmount, so a failed debootstrap can never take the host's /dev or /proc
    with it.  Retried briefly: processes of a killed debootstrap may still be
    exiting (and writing) for a moment.
    """
    for attempt in range(4):
        if not directory.exists():
            return
        if attempt:
            time.sleep(0.5 * attempt)
        for point in _mounts_under(directory):
            run([*root, "umount", "--lazy", point], log, check=False, timeout=60)
        run([*root, "rm", "-rf", "--one-file-system", str(directory)], log, check=False, timeout=600)
    if directory.exists():
        log.event(f"could not remove the temporary rootfs {directory}; remove it by hand")


_ISOLATE = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]


def _isolated(cmd: list[str], log: Log, root: list[str]) -> list[str]:
    """``cmd`` in mount and PID namespaces of its own, when the host allows.

    Killing debootstrap (Ctrl-C, timeout: run() SIGKILLs its child) then
    kills everything it started too (dpkg running in the chroot would go on
    writing into the rootfs while we delete it), and the mounts it made in
    the target (proc, sys) vanish with the namespace instead of lingering on
    the host.
    """
    probe = run([*root, *_ISOLATE, "true"], log, check=False, timeout=30)
    if probe.returncode == 0:
        return [*root, *_ISOLATE, *cmd]
    log.event("unshare --mount --pid does not work here: debootstrap runs without namespaces")
    return [*root, *cmd]


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


def rootfs_tarball(
    log: Log,
    *,
    mirror: str | None = None,
    suite: str = DEFAULT_SUITE,
    on_line: LineSink | None = None,
) -> Path:
    """A cached debootstrap ``--variant=minbase`` rootfs of Debian ``suite``.

    Built with ``debootstrap`` from ``mirror`` (default: $VMDOCK_APT_MIRROR,
    else deb.debian.org) the first time, tarred (gzip) and cached as
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
    cache = target.parent
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f"rootfs-{suite}-{arch}.lock", f"the {suite} rootfs", log):
        if target.is_file():  # another process built it while we waited
            log.event(f"rootfs {suite}/{arch}: built meanwhile by another process: {target}")
            return target
        root = _root_prefix()
        if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
            raise ProviderError(
                "debootstrap is not installed",
                hint="apt-get install debootstrap (vmdock builds its Debian images with it)",
                log=log.path,
            )
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        extra: list[str] = []
        if keyring.is_file():
            extra.append(f"--keyring={keyring}")
        else:
            raise ProviderError(
                f"the Debian archive keyring {keyring} is missing",
                hint="apt-get install debian-archive-keyring (debootstrap checks the mirror with it)",
                log=log.path,
            )
        # Stale temporary folders of a process that was killed (SIGKILL, power
        # loss) while building: we hold the lock, so nobody is using them.
        for stale in cache.glob(f".rootfs-{suite}-{arch}.*"):
            if stale.is_dir():
                log.event(f"removing the stale temporary rootfs {stale}")
                _remove_build_dir(stale, log, root)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()
        build_dir = Path(tempfile.mkdtemp(prefix=f".rootfs-{suite}-{arch}.", dir=cache))
        rootfs = build_dir / "rootfs"
        part = build_dir / target.name
        started = time.monotonic()
        try:
            log.event(f"rootfs {suite}/{arch}: debootstrap --variant=minbase from {mirror}")
            out = _Tail(on_line)
            try:
                run(
                    _isolated(
                        ["debootstrap", "--variant=minbase", f"--arch={arch}", *extra,
                         suite, str(rootfs), mirror],
                        log, root,
                    ),
                    log, timeout=_DEBOOTSTRAP_TIMEOUT, on_line=out,
                )
            except CommandError as exc:
                own_log = rootfs / "debootstrap" / "debootstrap.log"
                with contextlib.suppress(OSError):
                    lines = own_log.read_text(encoding="utf-8", errors="replace").splitlines()
                    log.write(f"--- last lines of {own_log} (removed with the failed build):")
                    log.write("\n".join("    " + line for line in lines[-80:]) or "    (empty)")
                exc.stderr_tail = tail(out.text()) or exc.stderr_tail
                raise exc.with_context(
                    step="rootfs",
                    hint=f"debootstrap could not build Debian {suite} from {mirror}: is the mirror "
                    f"reachable (set ${MIRROR_ENV} to a reachable Debian mirror)? The log has "
                    "debootstrap's output and the end of its own debootstrap.log",
                )
            debootstrap_seconds = time.monotonic() - started
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
                "suite": suite,
                "arch": arch,
                "mirror": mirror,
                "variant": "minbase",
                "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "debootstrap_seconds": round(debootstrap_seconds, 1),
                "total_seconds": round(time.monotonic() - started, 1),
                "sha256": _sha256(part),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,  # os.replace keeps it
            }
            _write_json_atomic(_meta_path(target), meta)
            os.replace(part, target)
            log.event(
                f"rootfs {suite}/{arch}: built {target} ({st.st_size / 1e6:.0f} MB) "
                f"in {meta['total_seconds']:.0f}s (debootstrap {debootstrap_seconds:.0f}s)"
            )
        finally:
            _remove_build_dir(build_dir, log, root)
    return target


# --------------------------------------------------------------------------
# docker


def _docker(
    args: list[str],
    log: Log,
    *,
    timeout: float | None = 120,
    check: bool = True,
    on_line: LineSink | None = None,
):
    """Run ``docker ARGS``; a missing docker CLI becomes a ProviderError."""
    try:
        return run(["docker", *args], log, timeout=timeout, check=check, on_line=on_line)
    except CommandError as exc:
        if exc.exit_code is None and "not installed" in exc.message:
            raise ProviderError(
                "the docker command is not installed",
                command=exc.command,
                hint="apt-get install docker.io (vmdock's docker provider needs dockerd on this host)",
                log=log.path,
            ) from exc
        raise


def _daemon_unreachable(stderr: str) -> bool:
    s = stderr.lower()
    return any(
        needle in s
        for needle in (
            "cannot connect to the docker daemon",
            "is the docker daemon running",
            "permission denied while trying to connect",
            "error during connect",
        )
    )


def _unreachable_error(result, log: Log) -> ProviderError:
    return ProviderError(
        "dockerd is not reachable",
        command=" ".join(result.args),
        exit_code=result.returncode,
        stderr_tail=tail(result.stderr),
        hint=_DOCKER_HINT,
        log=log.path,
    )


def image_exists(log: Log, ref: str) -> bool:
    """True when dockerd has image ``ref``; a ProviderError when dockerd is unreachable."""
    result = _docker(["image", "inspect", "--format", "{{.Id}}", ref], log, check=False, timeout=60)
    if result.returncode == 0:
        return True
    err = result.stderr.lower()
    if "no such image" in err or "no such object" in err:
        return False
    if _daemon_unreachable(result.stderr):
        raise _unreachable_error(result, log)
    raise CommandError(
        f"docker image inspect {ref} failed",
        command=" ".join(result.args),
        exit_code=result.returncode,
        stderr_tail=tail(result.stderr),
        hint=_DOCKER_HINT,
        log=log.path,
    )


def machine_image_tag(rootfs: Path, mirror: str, suite: str = DEFAULT_SUITE) -> str:
    """``vmdock/machine:debian12-<hash>``: the hash covers the files of
    ``templates/machine`` (the Dockerfile, the keys), the rootfs tarball's
    sha256, the mirror and the suite."""
    h = hashlib.sha256()
    for f in sorted(p for p in MACHINE_TEMPLATE_DIR.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(f"rootfs={rootfs_meta(rootfs)['sha256']}\0mirror={mirror}\0suite={suite}".encode())
    return f"{MACHINE_IMAGE_REPO}:{suite_label(suite)}-{h.hexdigest()[:12]}"


def ensure_machine_image(
    log: Log,
    *,
    mirror: str | None = None,
    on_line: LineSink | None = None,
) -> str:
    """The tag of the machine image, built first if dockerd does not have it.

    Returns e.g. ``vmdock/machine:debian12-3f2a9c01b7de``.  When the image
    exists this costs one ``docker image inspect``.  Else the cached rootfs
    (``rootfs_tarball``, built first if needed) is ``docker import``ed under a
    temporary tag, ``templates/machine/Dockerfile`` is built on top of it with
    apt using the same mirror, the result is labelled
    ``vmdock.role=machine-image`` and the temporary tag is removed.
    """
    if not MACHINE_DOCKERFILE.is_file():
        raise ProviderError(
            f"the machine image Dockerfile {MACHINE_DOCKERFILE} is missing",
            hint="reinstall vmdock (templates/machine/ belongs to it)",
        )
    mirror = apt_mirror(mirror)
    suite = DEFAULT_SUITE
    tarball = rootfs_tarball(log, mirror=mirror, suite=suite, on_line=on_line)
    tag = machine_image_tag(tarball, mirror, suite)
    if image_exists(log, tag):
        log.event(f"machine image {tag}: present")
        return tag
    with _file_lock(paths.cache_dir() / "machine-image.lock", "the machine image", log):
        if image_exists(log, tag):
            log.event(f"machine image {tag}: built meanwhile by another process")
            return tag
        started = time.monotonic()
        meta = rootfs_meta(tarball)
        base = f"{ROOTFS_IMPORT_REPO}:{suite}-{meta['sha256'][:12]}-{os.getpid()}"
        log.event(f"machine image {tag}: building from {tarball}")
        try:
            _docker(
                ["import", "--message", f"vmdock rootfs {tarball.name} (temporary)", str(tarball), base],
                log, timeout=900, on_line=on_line,
            )
            out = _Tail(on_line)
            proxies = [a for v in _PROXY_VARS if os.environ.get(v) for a in ("--build-arg", v)]
            try:
                _docker(
                    [
                        "build",
                        "--network=host",  # a mirror on 127.0.0.1 (apt-cacher-ng) works too
                        "--force-rm",
                        "--build-arg", f"BASE={base}",
                        "--build-arg", f"MIRROR={mirror}",
                        "--build-arg", f"SUITE={suite}",
                        *proxies,
                        "--label", ROLE_LABEL,
                        "--label", f"vmdock.rootfs.sha256={meta['sha256']}",
                        "--label", f"vmdock.mirror={mirror}",
                        "--tag", tag,
                        "--file", str(MACHINE_DOCKERFILE),
                        str(MACHINE_TEMPLATE_DIR),
                    ],
                    log, timeout=1800, on_line=out,
                )
            except CommandError as exc:
                # The legacy builder keeps the images of the steps that
                # worked; they would stay behind as dangling images.
                for image_id in reversed(out.step_images):
                    _docker(["rmi", image_id], log, check=False, timeout=120)
                exc.stderr_tail = tail(out.text()) or exc.stderr_tail
                raise exc.with_context(
                    step="machine-image",
                    hint=f"the machine image build failed; if apt failed, is {mirror} reachable "
                    f"from a container (set ${MIRROR_ENV})?",
                )
        finally:
            result = _docker(["rmi", base], log, check=False, timeout=120)
            if result.returncode != 0 and "no such image" not in result.stderr.lower():
                log.event(f"could not remove the temporary image {base}: {tail(result.stderr, 3)}")
        log.event(f"machine image {tag}: built in {time.monotonic() - started:.0f}s")
    return tag


def remove_machine_images(log: Log) -> list[str]:
    """Remove every image labelled ``vmdock.role=machine-image``.

    Returns the references removed.  Images still used by containers are not
    forced: after removing what it can, this raises a CommandError naming
    them (destroy the machines first).
    """
    listed = _docker(
        ["image", "ls", "--filter", f"label={ROLE_LABEL}", "--format", "{{.Repository}}:{{.Tag}}\t{{.ID}}"],
        log, check=False, timeout=60,
    )
    if listed.returncode != 0:
        if _daemon_unreachable(listed.stderr):
            raise _unreachable_error(listed, log)
        raise CommandError(
            "could not list the machine images",
            command=" ".join(listed.args),
            exit_code=listed.returncode,
            stderr_tail=tail(listed.stderr),
            log=log.path,
        )
    refs: list[str] = []
    for line in listed.stdout.splitlines():
        if not line.strip():
            continue
        ref, _, image_id = line.partition("\t")
        refs.append(image_id.strip() if "<none>" in ref else ref.strip())
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for ref in dict.fromkeys(refs):
        result = _docker(["rmi", ref], log, check=False, timeout=300)
        if result.returncode == 0:
            removed.append(ref)
        elif "no such image" in result.stderr.lower():
            continue
        elif _daemon_unreachable(result.stderr):
            raise _unreachable_error(result, log)
        else:
            failed.append((ref, result.stderr.strip()))
    if failed:
        raise CommandError(
            f"could not remove {len(failed)} machine image(s): {', '.join(r for r, _ in failed)}",
            command="docker rmi " + " ".join(r for r, _ in failed),
            stderr_tail=tail("\n".join(err for _, err in failed)),
            hint="containers still use them: destroy those machines first (vmdock down / "
            "vagrant destroy, or docker rm -f <container>), then retry",
            log=log.path,
        )
    return removed


# --------------------------------------------------------------------------
# create args


def _docker_host_key() -> str:
    return os.environ.get("DOCKER_HOST") or os.environ.get("DOCKER_CONTEXT") or "default"


def host_allows_privileged(log: Log, *, image: str | None = None) -> bool:
    """Whether ``docker run --privileged`` works on this docker host.

    Tried once (``docker run --rm --privileged <machine image> true``) and
    remembered in ``cache_dir()/host-facts.json`` (per $DOCKER_HOST).  Delete
    that file to ask again.  When the privileged run fails, a plain run of the
    same image tells "not allowed" from "docker is broken" (a ProviderError).
    """
    facts_file = paths.cache_dir() / HOST_FACTS_FILE
    key = _docker_host_key()
    known = _read_json(facts_file).get("privileged", {})
    if isinstance(known, dict) and isinstance(known.get(key), dict) and "allowed" in known[key]:
        return bool(known[key]["allowed"])
    image = image or ensure_machine_image(log)
    probe = ["run", "--rm", "--network=none", "--entrypoint=/bin/true", image]
    result = _docker([probe[0], "--privileged", *probe[1:]], log, check=False, timeout=60)
    if result.returncode == 0:
        allowed = True
        why = ""
    else:
        if _daemon_unreachable(result.stderr):
            raise _unreachable_error(result, log)
        plain = _docker(probe, log, check=False, timeout=60)
        if plain.returncode != 0:
            if _daemon_unreachable(plain.stderr):
                raise _unreachable_error(plain, log)
            raise ProviderError(
                "docker cannot run containers from the machine image",
                command=" ".join(plain.args),
                exit_code=plain.returncode,
                stderr_tail=tail(plain.stderr),
                hint="check dockerd's log; `docker run --rm <image> true` must work",
                log=log.path,
            )
        allowed = False
        why = tail(result.stderr, 3)
    log.event(f"docker host {key}: --privileged {'works' if allowed else 'fails: ' + why}")
    with _file_lock(paths.cache_dir() / f"{HOST_FACTS_FILE}.lock", "host facts", log, wait=60):
        facts = _read_json(facts_file)
        section = facts.get("privileged")
        if not isinstance(section, dict):
            section = {}
        section[key] = {
            "allowed": allowed,
            "checked_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "error": why,
        }
        facts["privileged"] = section
        _write_json_atomic(facts_file, facts)
    return allowed


def machine_create_args(log: Log) -> list[str]:
    """``docker create`` args for a machine that runs its own dockerd here."""
    if host_allows_privileged(log):
        return list(PRIVILEGED_CREATE_ARGS)
    return list(MACHINE_CREATE_ARGS)


__all__ = [
    "DEFAULT_MIRROR",
    "MACHINE_CREATE_ARGS",
    "PRIVILEGED_CREATE_ARGS",
    "ROLE_LABEL",
    "apt_mirror",
    "debian_arch",
    "ensure_machine_image",
    "host_allows_privileged",
    "image_exists",
    "machine_create_args",
    "machine_image_tag",
    "remove_machine_images",
    "rootfs_meta",
    "rootfs_path",
    "rootfs_tarball",
]
