"""The image of Vagrant *docker provider* machines: containers that stand in
for VMs, with sshd as the main process, user ``vagrant`` with Vagrant's
insecure key and passwordless sudo, able to run their own dockerd (see
``machine_create_args``).

Its tag is a pure function of what it is built from (``machine_image_tag``),
so rendering never builds, and an image already on this dockerd is reused by
every vmdock home.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

from .. import paths
from ..errors import CommandError, ProviderError, VmdockError, tail
from ..runlog import Log, run
from . import fsutil, hostfacts
from .debootstrap import MIRROR_ENV, LineSink, OutputTail
from .mirror import mounts as mirror_mounts
from .mirror import served as mirror_served
from .rootfs import DEFAULT_SUITE, apt_mirror, debian_arch, rootfs_meta, rootfs_tarball

#: Debian suite -> the name used in image tags.
SUITE_LABELS = {"bullseye": "debian11", "bookworm": "debian12", "trixie": "debian13"}

MACHINE_TEMPLATE_DIR = paths.TEMPLATES_DIR / "machine"
MACHINE_DOCKERFILE = MACHINE_TEMPLATE_DIR / "Dockerfile"
MACHINE_IMAGE_REPO = "vmdock/machine"
ROOTFS_IMPORT_REPO = "vmdock/rootfs-import"
ROLE_LABEL = "vmdock.role=machine-image"

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

_DOCKER_HINT = (
    "dockerd is not reachable: start it (systemctl start docker, or "
    "`nohup dockerd >/var/log/dockerd.log 2>&1 &`) and make sure this user may use "
    "/var/run/docker.sock (root, or a member of group docker)"
)
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class _BuildOutput(OutputTail):
    """Also notes the images of the steps a legacy ``docker build`` made
    (" ---> 3f2a9c01b7de" not after "Using cache"), to remove them on failure."""

    def __init__(self, forward: LineSink | None):
        super().__init__(forward)
        self.step_images: list[str] = []

    def __call__(self, line: str) -> None:
        m = re.match(r"^ ---> ([0-9a-f]{12})$", line)
        if m and not (self.lines and "Using cache" in self.lines[-1]):
            self.step_images.append(m.group(1))
        super().__call__(line)


# --------------------------------------------------------------------------
# docker


def _docker(
    args: list[str], log: Log, *, timeout: float | None = 120, check: bool = True, on_line: LineSink | None = None,
) -> subprocess.CompletedProcess:
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


def _failed(result: subprocess.CompletedProcess, log: Log, message: str, **kw) -> VmdockError:
    """The error of a failed docker call: ProviderError when dockerd is unreachable."""
    if _daemon_unreachable(result.stderr):
        return ProviderError(
            "dockerd is not reachable", command=" ".join(result.args), exit_code=result.returncode,
            stderr_tail=tail(result.stderr), hint=_DOCKER_HINT, log=log.path,
        )
    return CommandError(
        message, command=" ".join(result.args), exit_code=result.returncode,
        stderr_tail=tail(result.stderr), log=log.path, **kw,
    )


def image_exists(log: Log, ref: str) -> bool:
    """True when dockerd has image ``ref``; a ProviderError when dockerd is unreachable."""
    result = _docker(["image", "inspect", "--format", "{{.Id}}", ref], log, check=False, timeout=60)
    if result.returncode == 0:
        return True
    err = result.stderr.lower()
    if "no such image" in err or "no such object" in err:
        return False
    raise _failed(result, log, f"docker image inspect {ref} failed", hint=_DOCKER_HINT)


# --------------------------------------------------------------------------
# the image


def machine_image_tag(suite: str = DEFAULT_SUITE) -> str:
    """``vmdock/machine:debian12-<hash>``, computed without building anything.

    The hash covers the files of ``templates/machine`` (the Dockerfile, the
    keys), the suite and the architecture.  Not the rootfs tarball, nor the
    apt mirror: a mirror is where the packages come from, not what they are
    (a minbase of one suite is the same system from any mirror), so an image
    built by another home, or by a teacher with another mirror (a bundle),
    serves every home.  The machines' apt sources are written at `up` by the
    "apt sources" item, for the mirror of the moment.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in MACHINE_TEMPLATE_DIR.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(f"suite={suite}\0arch={debian_arch()}".encode())
    return f"{MACHINE_IMAGE_REPO}:{SUITE_LABELS.get(suite, suite)}-{h.hexdigest()[:12]}"


def ensure_machine_image(log: Log, *, mirror: str | None = None, on_line: LineSink | None = None) -> str:
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
    tag = machine_image_tag(suite)
    if image_exists(log, tag):
        log.event(f"machine image {tag}: present")
        return tag
    tarball = rootfs_tarball(log, mirror=mirror, suite=suite, on_line=on_line)
    with fsutil.file_lock(paths.cache_dir() / "machine-image.lock", "the machine image", log):
        if image_exists(log, tag):
            log.event(f"machine image {tag}: built meanwhile by another process")
            return tag
        started = time.monotonic()
        _build(log, tag, tarball, mirror=mirror, suite=suite, on_line=on_line)
        log.event(f"machine image {tag}: built in {time.monotonic() - started:.0f}s")
    return tag


def _build(log: Log, tag: str, tarball: Path, *, mirror: str, suite: str, on_line: LineSink | None) -> None:
    """``docker import`` the rootfs under a temporary tag, build the Dockerfile on it."""
    sha = rootfs_meta(tarball)["sha256"]
    base = f"{ROOTFS_IMPORT_REPO}:{suite}-{sha[:12]}-{os.getpid()}"
    log.event(f"machine image {tag}: building from {tarball}")
    try:
        _docker(["import", "--message", f"vmdock rootfs {tarball.name} (temporary)", str(tarball), base],
                log, timeout=900, on_line=on_line)
        out = _BuildOutput(on_line)
        proxies = [a for v in _PROXY_VARS if os.environ.get(v) for a in ("--build-arg", v)]
        try:
            with mirror_served(mirror, log) as fetch_from:
                build = [
                    "build",
                    "--network=host",  # a mirror on 127.0.0.1 (apt-cacher-ng, a served folder) works too
                    "--force-rm",
                    "--build-arg", f"BASE={base}", "--build-arg", f"MIRROR={fetch_from}",
                    "--build-arg", f"SOURCES_MIRROR={mirror}", "--build-arg", f"SUITE={suite}",
                    *proxies,
                    "--label", ROLE_LABEL,
                    "--label", f"vmdock.rootfs.sha256={sha}",
                    "--label", f"vmdock.mirror={mirror}",
                    "--tag", tag, "--file", str(MACHINE_DOCKERFILE), str(MACHINE_TEMPLATE_DIR),
                ]
                _docker(build, log, timeout=1800, on_line=out)
        except CommandError as exc:
            # The legacy builder keeps the images of the steps that worked;
            # they would stay behind as dangling images.
            for image_id in reversed(out.step_images):
                _docker(["rmi", image_id], log, check=False, timeout=120)
            exc.stderr_tail = tail(out.text()) or exc.stderr_tail
            raise exc.with_context(  # noqa: B904  (re-raises the caught error itself, with context added)
                step="machine-image",
                hint=f"the machine image build failed; if apt failed, is {mirror} reachable "
                f"from a container (set ${MIRROR_ENV})?",
            )
    finally:
        result = _docker(["rmi", base], log, check=False, timeout=120)
        if result.returncode != 0 and "no such image" not in result.stderr.lower():
            log.event(f"could not remove the temporary image {base}: {tail(result.stderr, 3)}")


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
        raise _failed(listed, log, "could not list the machine images")
    refs: list[str] = []
    for line in listed.stdout.splitlines():
        if line.strip():
            ref, _, image_id = line.partition("\t")
            refs.append(image_id.strip() if "<none>" in ref else ref.strip())
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for ref in dict.fromkeys(refs):
        result = _docker(["rmi", ref], log, check=False, timeout=300)
        if result.returncode == 0:
            removed.append(ref)
        elif _daemon_unreachable(result.stderr):
            raise _failed(result, log, "")
        elif "no such image" not in result.stderr.lower():
            failed.append((ref, result.stderr.strip()))
    if failed:
        raise CommandError(
            f"could not remove {len(failed)} machine image(s): {', '.join(r for r, _ in failed)}",
            command="docker rmi " + " ".join(r for r, _ in failed),
            stderr_tail=tail("\n".join(err for _, err in failed)),
            hint="containers still use them: destroy those machines first (vmdock destroy LAB / "
            "vagrant destroy, or docker rm -f <container>), then retry",
            log=log.path,
        )
    return removed


# --------------------------------------------------------------------------
# create args


def _docker_host_key() -> str:
    return os.environ.get("DOCKER_HOST") or os.environ.get("DOCKER_CONTEXT") or "default"


def _probe_privileged(log: Log, image: str) -> tuple[bool, str]:
    """(allowed, why not): ``docker run --privileged``, and a plain run when it fails."""
    probe = ["run", "--rm", "--network=none", "--entrypoint=/bin/true", image]
    result = _docker([probe[0], "--privileged", *probe[1:]], log, check=False, timeout=60)
    if result.returncode == 0:
        return True, ""
    if _daemon_unreachable(result.stderr):
        raise _failed(result, log, "")
    plain = _docker(probe, log, check=False, timeout=60)
    if plain.returncode != 0:
        if _daemon_unreachable(plain.stderr):
            raise _failed(plain, log, "")
        raise ProviderError(
            "docker cannot run containers from the machine image",
            command=" ".join(plain.args), exit_code=plain.returncode, stderr_tail=tail(plain.stderr),
            hint="check dockerd's log; `docker run --rm <image> true` must work", log=log.path,
        )
    return False, tail(result.stderr, 3)


def host_allows_privileged(log: Log, *, image: str | None = None) -> bool:
    """Whether ``docker run --privileged`` works on this docker host.

    Tried once (``docker run --rm --privileged <machine image> true``) and
    remembered in ``host-facts.json`` (per $DOCKER_HOST).  Delete that file to
    ask again.  When the privileged run fails, a plain run of the same image
    tells "not allowed" from "docker is broken" (a ProviderError).
    """
    key = _docker_host_key()
    known = hostfacts.read_fact("privileged")
    if isinstance(known.get(key), dict) and "allowed" in known[key]:
        return bool(known[key]["allowed"])
    allowed, why = _probe_privileged(log, image or ensure_machine_image(log))
    log.event(f"docker host {key}: --privileged {'works' if allowed else 'fails: ' + why}")
    known = hostfacts.read_fact("privileged")  # another process may have added its host
    known[key] = {"allowed": allowed, "checked_at": fsutil.utc_now(), "error": why}
    hostfacts.write_fact("privileged", known, log)
    return allowed


def machine_create_args(log: Log, *, mirrors: tuple[str | None, ...] = (), probe: bool = True) -> list[str]:
    """``docker create`` args for a machine that runs its own dockerd here.

    The folders of ``file:`` ``mirrors`` are mounted read-only at the same
    path.  ``probe=False`` never runs (or builds) anything: when this docker
    host was not probed yet, the args that work without ``--privileged``.
    """
    if probe:
        allowed = host_allows_privileged(log)
    else:
        known = hostfacts.read_fact("privileged").get(_docker_host_key())
        allowed = isinstance(known, dict) and bool(known.get("allowed"))
    return [*(PRIVILEGED_CREATE_ARGS if allowed else MACHINE_CREATE_ARGS), *mirror_mounts(*mirrors)]
