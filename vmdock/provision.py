"""Provisioning with Fabric: Docker, the lab base image, the lab's files and steps.

The work is a *plan*: an ordered list of items, each with a fingerprint that
chains the one before it.  Per machine: apt sources → install Docker → write
daemon.json and start the daemon → base image → lab files; these run for all
machines side by side.  Then the lab's own steps, in order, each on its
machines.  An item whose fingerprint is in the state file is skipped, so a
re-run resumes at the first item that failed or changed.  The apt sources are
outside the chain: the mirror is where packages come from, so changing it
rewrites the sources and re-runs nothing else.
"""
from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from . import paths
from .errors import ProvisionError, VmdockError
from .events import Events
from .loader import LoadedLab, _display
from .model import Lab, Step
from .runlog import Log
from .settings import Settings
from .state import LabState, fingerprint, hash_paths
from .transport import REMOTE_TMP, Transport

REMOTE_LABS = "/opt/vmdock/labs"
BUILTIN_TIMEOUT = 1800
_state_lock = threading.Lock()  # machines provision side by side; one state file


def remote_lab_dir(lab: str) -> str:
    return posixpath.join(REMOTE_LABS, lab)


def env_key(machine: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", machine.upper())


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


def step_env(
    lab: Lab,
    machine: str,
    ips: dict[str, str],
    secrets: dict[str, str],
    exports: dict[str, str],
    exports_file: str | None = None,
) -> dict[str, str]:
    """Every variable a step (or a check) gets in ``machine``, in the order they are set."""
    env = {
        "VMDOCK_LAB": lab.name,
        "VMDOCK_MACHINE": machine,
        "VMDOCK_LAB_DIR": remote_lab_dir(lab.name),
        "VMDOCK_BASE_IMAGE": lab.base_image,
    }
    for name, ip in ips.items():
        env[f"VMDOCK_IP_{env_key(name)}"] = ip
    env.update(lab.env)
    env.update(secrets)
    env.update(exports)
    if exports_file:
        env["VMDOCK_EXPORTS"] = exports_file
    return env


def exports_file(index: int) -> str:
    """Where step ``index`` (0-based) writes its ``KEY=value`` lines."""
    return posixpath.join(REMOTE_TMP, f"exports-{index + 1}")


def step_origin(loaded: LoadedLab, index: int) -> str:
    """How errors name a step's ``run:`` text: ``labs/x/lab.yaml: steps[2].run``."""
    return f"{_display(loaded.file)}: steps[{index}].run"


@dataclass
class Item:
    key: str
    machine: str
    title: str
    fingerprint: str
    action: Callable[[Transport], None]
    builtin: bool


@dataclass
class Context:
    loaded: LoadedLab
    state: LabState
    settings: Settings
    log: Log
    ips: dict[str, str]
    base_tarball: Path | None  # the host's cached rootfs tarball, if any
    base_cache: Path  # where an in-machine build is kept on the host
    image_tarballs: dict = field(default_factory=dict)  # image ref → tarball (--images-dir)

    @property
    def lab(self):
        return self.loaded.lab

    def secrets(self) -> dict[str, str]:
        """The lab's secrets (generated once, or VMDOCK_SECRET_<NAME>); from now on masked in the log."""
        values = self.state.ensure_secrets(self.lab.secrets)
        self.log.add_secrets(values.values())
        return values

    def step_env(self, machine: str, exports_file: str | None = None) -> dict[str, str]:
        return step_env(self.lab, machine, self.ips, self.secrets(), self.state.exports, exports_file)


# -- the built-in items ---------------------------------------------------------

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
        with _state_lock:  # remembered, so a later `up` needs no --images-dir
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


def _step_action(ctx: Context, index: int, step: Step, machine: str, last: bool):
    """A lab step on one machine.  ``last``: the step's last machine, where its exports must be complete."""
    key = f"step{index + 1}:{machine}"

    def action(t: Transport) -> None:
        exports = exports_file(index) if step.exports else None
        env = ctx.step_env(machine, exports)
        if exports:
            t.run(f"sudo -n rm -f {exports}", check=False)
        t.run_script(
            step.run,
            env=env,
            cwd=remote_lab_dir(ctx.lab.name),
            name=f"step{index + 1}",
            timeout=step.timeout,
            step=step.name,
            origin=step_origin(ctx.loaded, index),
        )
        if exports:
            # values may be join tokens: read them without logging them, and leave no copy behind
            out = t.run(f"sudo -n sh -c 'cat {exports}; rm -f {exports}'", check=False, secret=True,
                        shown=f"cat {exports}").stdout
            found = {}
            for line in out.splitlines():
                k, sep, v = line.partition("=")
                if sep and k.strip() in step.exports:
                    found[k.strip()] = v.strip()
            with _state_lock:
                ctx.state.exports.update(found)
                ctx.state.save()
            # a step on several machines may export a name from any of them
            missing = [n for n in step.exports if n not in ctx.state.exports]
            if last and missing:
                raise ProvisionError(
                    f"the step did not export {', '.join(missing)} (write KEY=value lines to $VMDOCK_EXPORTS)",
                    step=step.name,
                )

    return key, action


def build_plan(ctx: Context, machine_ids: dict[str, str]) -> list[Item]:
    """Every item in order, with chained fingerprints."""
    lab = ctx.lab
    items: list[Item] = []
    tails = []
    for m in lab.machines:
        fp = fingerprint("", ctx.state.provider or "", m.name, machine_ids.get(m.name, ""))
        for short, make in BUILTINS:
            made = make(ctx)
            if made is None:  # does not apply to this lab
                continue
            title, parts, action = made
            if short == "apt":
                # the apt sources chain nothing: a new mirror rewrites them, and installs nothing again
                items.append(Item(f"{m.name}:{short}", m.name, title, fingerprint(fp, short, *parts), action, True))
                continue
            fp = fingerprint(fp, short, *parts)
            items.append(Item(f"{m.name}:{short}", m.name, title, fp, action, True))
            if short not in ("files", "images"):
                machine_fp = fp
        # The lab's steps chain on the machine and its Docker, not on the upload of
        # every lab file (a step re-runs when the files it names change) nor on
        # images loaded from --images-dir (present once, needed by no later `up`).
        tails.append(machine_fp)
    fp = fingerprint("", *tails)
    env_names = json.dumps([sorted(lab.env.items()), lab.secrets, sorted(ctx.ips.items())])
    for i, step in enumerate(lab.steps):
        files = hash_paths(ctx.loaded.folder, step.files) if step.files else ""
        targets = lab.targets(step)
        for machine in targets:
            fp = fingerprint(fp, step.model_dump_json(), files, env_names, machine)
            key, action = _step_action(ctx, i, step, machine, last=machine == targets[-1])
            items.append(Item(key, machine, step.name, fp, action, False))
    return items


def run_plan(
    ctx: Context,
    items: list[Item],
    transports: dict[str, Transport],
    events: Events,
) -> int:
    """Run what is not done yet; return how many items ran."""
    ran = 0

    def run_item(item: Item) -> bool:
        if ctx.state.is_done(item.key, item.fingerprint):
            events.step_done(item.machine, item.key, item.title, 0.0, skipped=True)
            return False
        events.step_start(item.machine, item.key, item.title)
        start = time.monotonic()
        try:
            item.action(transports[item.machine])
        except VmdockError as exc:
            events.step_failed(item.machine, item.key, item.title, time.monotonic() - start)
            raise exc.with_context(  # noqa: B904  (re-raises the caught error itself, with context added)
                lab=ctx.lab.name, machine=item.machine, step=item.title, log=ctx.log.path
            )
        seconds = time.monotonic() - start
        with _state_lock:
            ctx.state.mark_done(item.key, item.fingerprint, seconds, f"{item.machine}: {item.title}")
        events.step_done(item.machine, item.key, item.title, seconds, skipped=False)
        return True

    # the built-in items: each machine's chain on its own thread
    builtin = [i for i in items if i.builtin]
    by_machine: dict[str, list[Item]] = {}
    for item in builtin:
        by_machine.setdefault(item.machine, []).append(item)

    def chain(machine_items: list[Item]) -> int:
        return sum(run_item(i) for i in machine_items)

    if by_machine:
        with ThreadPoolExecutor(max_workers=max(1, len(by_machine))) as pool:
            futures = [pool.submit(chain, its) for its in by_machine.values()]
            errors = []
            for f in futures:
                try:
                    ran += f.result()
                except BaseException as exc:  # collect, then raise the first
                    errors.append(exc)
            if errors:
                raise errors[0]
    for item in items:
        if not item.builtin:
            ran += run_item(item)
    return ran

