"""The built-in provisioning items: what every machine gets before the lab's steps, in order:
apt sources → Docker → daemon.json and the daemon → the labs' base image → images from
--images-dir → the lab's files.  Each is ``(title, fingerprint inputs, action)`` made from
the run's ``Context``; ``vmdock.provision`` chains them into the plan.
"""
from __future__ import annotations

import io
import json
import posixpath
import shlex
import tarfile
from collections.abc import Callable
from pathlib import Path

import jinja2

from . import paths
from .labcontext import Context, remote_lab_dir, state_lock
from .state import hash_paths
from .transport import REMOTE_TMP, Transport

BUILTIN_TIMEOUT = 1800


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(name: str, **values) -> str:
    return _templates().get_template(name).render(**values)


def provisioner(name: str) -> str:
    """A provisioner's text as it runs in a machine: provisioners/lib.sh, then the script."""
    lib = (paths.PROVISIONERS_DIR / "lib.sh").read_text(encoding="utf-8")
    return lib + "\n" + (paths.PROVISIONERS_DIR / name).read_text(encoding="utf-8")


def _apt_item(ctx: Context) -> tuple[str, list, Callable]:
    s = ctx.settings
    sources = (
        render_template(
            "debian.sources.j2", mirror=s.apt_mirror, suite="bookworm", security_mirror=s.apt_security_mirror
        )
        if s.apt_mirror
        else ""
    )
    script = provisioner("apt-mirror.sh")
    env = {"VMDOCK_APT_MIRROR": s.apt_mirror or "", "VMDOCK_APT_SECURITY_MIRROR": s.apt_security_mirror or ""}

    def action(t: Transport) -> None:
        if sources:
            t.put_bytes(sources.encode(), posixpath.join(REMOTE_TMP, "debian.sources"))
        # `apt-get update` proves the mirror (the old sources are put back when it fails),
        # but only a machine without Docker needs apt next: a machine from a lab image or
        # a machine image in a classroom whose mirror is closed still comes up.
        has_docker = t.run("sudo -n sh -c 'command -v dockerd' >/dev/null 2>&1", check=False).exit_code == 0
        run_env = {**env, "VMDOCK_APT_UPDATE": "0" if has_docker else "1"}
        t.run_script(script, env=run_env, name="apt-mirror", timeout=BUILTIN_TIMEOUT, step="apt sources")

    return "apt sources", [script, sources, json.dumps(env, sort_keys=True)], action


def _install_item(ctx: Context):
    s = ctx.settings
    script = provisioner("install-docker.sh")
    env = {"VMDOCK_DOCKER_SOURCE": s.docker_source, "VMDOCK_DOCKER_CE_MIRROR": s.docker_ce_mirror or ""}
    if s.get_docker_url:
        env["VMDOCK_GET_DOCKER_URL"] = s.get_docker_url

    def action(t: Transport) -> None:
        t.run_script(script, env=env, name="install-docker", timeout=BUILTIN_TIMEOUT, step="install Docker")

    return "install Docker", [script, json.dumps(env, sort_keys=True)], action


def _daemon_item(ctx: Context):
    s = ctx.settings
    daemon_json = render_template(
        "daemon.json.j2",
        registry_mirrors=list(s.registry_mirrors),
        insecure_registries=list(s.insecure_registries),
        storage_driver=None,
        extra={},
    )
    json.loads(daemon_json)  # the template must always give valid JSON
    script = provisioner("start-docker.sh")
    remote = posixpath.join(REMOTE_TMP, "daemon.json")

    def action(t: Transport) -> None:
        t.put_bytes(daemon_json.encode(), remote)
        t.run_script(script, env={"VMDOCK_DAEMON_JSON": remote}, name="start-docker", timeout=600, step="start Docker")

    return "configure and start Docker", [script, daemon_json], action


def _base_image_item(ctx: Context):
    lab = ctx.lab
    script = provisioner("base-image.sh")
    tarball = ctx.base_tarball if ctx.base_tarball and ctx.base_tarball.exists() else None
    suffix = "".join(tarball.suffixes) if tarball else ".tar"
    remote_tar = posixpath.join(REMOTE_TMP, "rootfs" + suffix)
    env = {
        "VMDOCK_BASE_IMAGE": lab.base_image,
        "VMDOCK_BASE_PULL": "1" if ctx.settings.pull_base or ctx.settings.registry_mirrors else "0",
        "VMDOCK_BASE_SUITE": "bookworm",
    }
    # What the image is made from (the host's rootfs tarball, else debootstrap from the mirror in
    # the machine) is not part of the item's identity: a machine that has the image keeps it (see
    # the action), so a classroom host with no rootfs cache or another mirror re-runs nothing.
    env_run = {**env, "VMDOCK_BASE_TARBALL": remote_tar if tarball else "",
               "VMDOCK_APT_MIRROR": ctx.settings.apt_mirror or ""}

    def action(t: Transport) -> None:
        present = t.run(f"sudo -n docker image inspect {shlex.quote(lab.base_image)} >/dev/null 2>&1", check=False)
        if present.exit_code == 0:
            return  # a re-provisioned machine keeps its images: no upload
        if tarball:
            t.put_file(str(tarball), remote_tar)
        t.run_script(script, env=env_run, name="base-image", timeout=BUILTIN_TIMEOUT, step="base image")
        if tarball:
            t.run(f"rm -f {remote_tar}", check=False)
        elif not ctx.base_cache.exists():
            # built in the machine: keep it on the host so the next machine loads it in seconds
            built = "/var/cache/vmdock/rootfs-bookworm.tar"
            if t.run(f"test -s {built}", check=False).exit_code == 0:
                ctx.base_cache.parent.mkdir(parents=True, exist_ok=True)
                part = ctx.base_cache.with_name(ctx.base_cache.name + f".{t.machine}.part")
                t.get_file(built, str(part))
                part.replace(ctx.base_cache)

    return f"base image {lab.base_image}", [script, json.dumps(env, sort_keys=True)], action


def _images_item(ctx: Context):
    """Images the lab needs, loaded from `docker save` tarballs (--images-dir)."""
    tarballs = sorted(set(ctx.image_tarballs.values()))
    if not tarballs:
        return None
    identity = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in tarballs]

    def action(t: Transport) -> None:
        for i, p in enumerate(tarballs):
            remote = posixpath.join(REMOTE_TMP, f"image-{i}{''.join(p.suffixes)}")
            t.put_file(str(p), remote)
            t.run_script(f"docker load -i {remote}\nrm -f {remote}\n", name="load-image", step=f"load {p.name}",
                         timeout=BUILTIN_TIMEOUT)
        with state_lock:  # remembered, so a later `up` needs no --images-dir
            ctx.state.images = sorted(set(ctx.state.images) | set(ctx.image_tarballs))
            ctx.state.save()

    names = ", ".join(sorted(ctx.image_tarballs)) or "none"
    return f"images from --images-dir ({names})", identity, action


def lab_archive(folder: Path) -> bytes:
    """The lab folder as a deterministic tar.gz (no mtimes, no owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for p in sorted(folder.rglob("*")):
            if "__pycache__" in p.parts:
                continue
            info = tar.gettarinfo(str(p), arcname=str(p.relative_to(folder)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            if p.is_file():
                with open(p, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _files_item(ctx: Context):
    folder = ctx.loaded.folder
    digest = hash_paths(folder, [p.name for p in folder.iterdir()])
    dest = remote_lab_dir(ctx.lab.name)

    def action(t: Transport) -> None:
        remote = posixpath.join(REMOTE_TMP, "lab.tar.gz")
        t.put_bytes(lab_archive(folder), remote)
        t.run_script(
            f"rm -rf {dest}\nmkdir -p {dest}\ntar -xzf {remote} -C {dest} --no-same-owner\nrm -f {remote}\n",
            name="lab-files",
            step="lab files",
        )

    return f"lab files → {dest}", [digest], action


BUILTINS = [
    ("apt", _apt_item),
    ("docker", _install_item),
    ("daemon", _daemon_item),
    ("base", _base_image_item),
    ("images", _images_item),
    ("files", _files_item),
]
