"""The lab lifecycle: render → vagrant up → provision → verify → destroy.

Pure orchestration over the modules of each step; reports progress through
``Events`` and raises ``VmdockError``s.  Never prints, never exits.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import needs, paths, providers
from .hostbuild import machine_image, mirror, rootfs
from .driver import SshConfig, VagrantDriver
from .errors import CommandError, StateError, VmdockError
from .events import Events
from .loader import LoadedLab, resolve
from .provision import Context, build_plan, run_plan
from .render import RenderOptions, container_name, machine_ips, render, write_atomic
from .runlog import Log, run
from .settings import Settings
from .state import LabState, lab_lock
from .transport import Transport
from .verify import CheckResult, run_checks


@dataclass
class UpResult:
    lab: str
    provider: str
    ran: int
    skipped: int
    seconds: float


class Lab:
    """One lab's runtime folder: Vagrantfile, .vagrant/, state.json, vmdock.log."""

    def __init__(self, loaded: LoadedLab):
        self.loaded = loaded
        self.name = loaded.name
        self.home = paths.lab_home(self.name)
        self.vagrantfile = self.home / "Vagrantfile"
        self.log = Log(self.home / "vmdock.log")

    def state(self) -> LabState:
        return LabState.load(self.home / "state.json", self.name)


class Engine:
    def __init__(self, settings: Settings | None = None, events: Events | None = None, labs_dirs=None):
        self.settings = settings or Settings.from_env()
        self.events = events or Events()
        self.labs_dirs = labs_dirs

    # -- naming ------------------------------------------------------------
    def lab(self, name: str) -> Lab:
        return Lab(resolve(name, self.labs_dirs))

    # -- render ---------------------------------------------------------------
    def _provider(self, lab: Lab, state: LabState) -> str:
        requested = self.settings.provider
        if state.provider and state.machines:
            if requested and requested != state.provider:
                raise StateError(
                    f"the lab is up with the {state.provider} provider, not {requested}",
                    lab=lab.name,
                    hint=f"`vmdock destroy {lab.name}` first to change provider",
                )
            return state.provider
        provider, why = providers.choose(requested, "--provider/VMDOCK_PROVIDER")
        self.events.info(f"provider: {why}")
        return provider

    def _render_options(self, lab: Lab, provider: str, build: bool = True) -> RenderOptions:
        s = self.settings
        mirrors = (s.apt_mirror, s.apt_security_mirror)
        if provider != "docker":
            mirror.refuse_for_vms(provider, VMDOCK_APT_MIRROR=s.apt_mirror, VMDOCK_APT_SECURITY_MIRROR=s.apt_security_mirror)
            return RenderOptions(provider=provider, **({"libvirt_driver": self._libvirt_driver()} if provider == "libvirt" else {}))
        if not build:  # `vmdock render`: the machine image's tag is known without building it
            tag = machine_image.machine_image_tag(rootfs.apt_mirror(s.apt_mirror))
            return RenderOptions(provider="docker", machine_image=tag, create_args=tuple(machine_image.machine_create_args(lab.log, mirrors=mirrors, probe=False)))
        self._phase("machine image")
        start = time.monotonic()
        image = machine_image.ensure_machine_image(lab.log, mirror=s.apt_mirror, on_line=self._line("image"))
        args = machine_image.machine_create_args(lab.log, mirrors=mirrors)
        self.events.phase_done("machine image", time.monotonic() - start)
        return RenderOptions(provider="docker", machine_image=image, create_args=tuple(args))

    def _libvirt_driver(self) -> str:
        return providers.libvirt_driver(on_info=self.events.info)

    def render(self, name: str) -> Path:
        lab = self.lab(name)
        with lab_lock(lab.home, lab.name, "render"):
            state = lab.state()
            provider = self._provider(lab, state)
            text = render(lab.loaded, self._render_options(lab, provider, build=False))
            write_atomic(lab.vagrantfile, text)
        return lab.vagrantfile

    # -- up ---------------------------------------------------------------------
    def up(self, name: str) -> UpResult:
        lab = self.lab(name)
        start = time.monotonic()
        # containerlab's rule: find out what is missing before creating anything (no state, no lock file)
        image_tarballs = needs.check(lab.loaded.lab, self.settings, loaded=lab.state().images, on_info=self.events.info)
        with lab_lock(lab.home, lab.name, "up"):
            state = lab.state()
            lab.log.event(f"=== vmdock up {lab.name} ===")
            try:
                return self._up(lab, state, start, image_tarballs)
            except VmdockError as exc:
                exc.with_context(lab=lab.name, log=lab.log.path)
                state.last_error = {
                    "message": exc.message,
                    "machine": exc.machine,
                    "step": exc.step,
                    "command": exc.command,
                    "exit_code": exc.exit_code,
                    "stderr_tail": exc.stderr_tail,
                }
                state.phase = "failed"
                state.save()
                lab.log.event(f"failed: {exc}")
                raise
            except KeyboardInterrupt:
                state.last_error = {"message": "interrupted (Ctrl-C)"}
                state.phase = "failed"
                state.save()
                lab.log.event("interrupted")
                raise

    def _up(self, lab: Lab, state: LabState, start: float, image_tarballs: dict) -> UpResult:
        provider = self._provider(lab, state)
        text = render(lab.loaded, self._render_options(lab, provider))
        changed = write_atomic(lab.vagrantfile, text)
        state.provider = provider
        state.lab_folder = str(lab.loaded.folder)
        if state.phase in ("new", "destroyed"):
            state.phase = "rendered"
        state.save()

        driver = VagrantDriver(lab.home, lab.log, lab=lab.name, provider=provider, on_line=self._line("vagrant"))
        self._phase("machines")
        t0 = time.monotonic()
        statuses = driver.status()
        created = [m for m, st in statuses.items() if st != "not_created"]
        if changed and created and state.machines:
            # The machines' settings (ports, memory, box, image) changed since they were made.
            if provider == "docker":  # a container's settings are fixed at creation: make it anew
                self.events.info(f"machine settings changed: recreating {', '.join(created)} (their steps run again)")
                driver.destroy()
                statuses = {m: "not_created" for m in statuses}
            else:
                self.events.info(f"machine settings changed: vagrant reload {', '.join(created)}")
                driver.reload()
                statuses = driver.status()
        down = [m for m, s in statuses.items() if s != "running"]
        if down:
            self.events.info(f"vagrant up: {', '.join(down)} ({provider})")
            try:
                driver.up()
            except CommandError as exc:
                if provider != "docker" and not exc.hint:
                    exc.hint = (
                        "if Vagrant could not fetch the box (no Vagrant Cloud here?), build one offline with "
                        "`vmdock box build` (libvirt) or point VMDOCK_BOX_URL_<BOX> at a mirror or a .box file"
                    )
                raise
        ids = {m.name: driver.machine_id(m.name) or "" for m in lab.loaded.lab.machines}
        known = {m: rec.get("id") for m, rec in state.machines.items()}
        # A machine that was halted and started again keeps its id but lost its
        # running daemons: count its boots, so its provisioning runs again.
        boots = {m: state.machines.get(m, {}).get("boots", 0) for m in ids}
        for m in down:
            if m in boots and known.get(m) == ids[m]:
                boots[m] += 1
        if down or known != ids or not all("ssh" in rec for rec in state.machines.values()):
            configs = driver.ssh_config()
            missing = [m for m in ids if m not in configs]
            if missing:
                raise CommandError(
                    f"vagrant ssh-config has no entry for {', '.join(missing)}", lab=lab.name, log=lab.log.path
                )
            state.machines = {m: {"id": ids[m], "boots": boots[m], "ssh": configs[m].to_dict()} for m in ids}
        state.phase = "booted" if state.phase != "provisioned" or down else state.phase
        state.save()
        self.events.phase_done("machines", time.monotonic() - t0)

        ctx = self._context(lab, state)
        ctx.image_tarballs = image_tarballs
        plan = build_plan(ctx, {m: f"{ids[m]}#{boots[m]}" for m in ids})
        transports = self._transports(lab, state)
        try:
            ran = run_plan(ctx, plan, transports, self.events)
        finally:
            for t in transports.values():
                t.close()
        state.phase = "provisioned"
        state.last_error = None
        state.save()
        return UpResult(lab.name, provider, ran, len(plan) - ran, time.monotonic() - start)

    def _context(self, lab: Lab, state: LabState) -> Context:
        cache = rootfs.rootfs_path()
        tarball = cache if cache.exists() else None
        return Context(
            loaded=lab.loaded,
            state=state,
            settings=self.settings,
            log=lab.log,
            ips=machine_ips(lab.loaded),
            base_tarball=tarball,
            base_cache=cache,
        )

    def _transports(self, lab: Lab, state: LabState) -> dict[str, Transport]:
        return {
            m: Transport(
                m,
                SshConfig.from_dict(rec["ssh"]),
                lab.log,
                lab=lab.name,
                connect_timeout=self.settings.connect_timeout,
                on_line=lambda machine, line: self.events.line(machine, line),
            )
            for m, rec in state.machines.items()
        }

    # -- verify -------------------------------------------------------------
    def verify(self, name: str, only: list[str] | None = None) -> tuple[Lab, list[CheckResult]]:
        lab = self.lab(name)
        state = lab.state()
        if state.phase != "provisioned" or not state.machines:
            raise StateError(
                f"the lab is not up (state: {state.phase})",
                lab=lab.name,
                hint=f"`vmdock up {lab.name}` first" + (f"; last error: {state.last_error['message']}" if state.last_error else ""),
            )
        lab.log.event(f"=== vmdock verify {lab.name} ===")
        ctx = self._context(lab, state)
        transports = self._transports(lab, state)
        try:
            results = run_checks(ctx, transports, self.events, only)
        finally:
            for t in transports.values():
                t.close()
        if only and not results:
            raise StateError(f"no check named {', '.join(only)}", lab=lab.name)
        return lab, results

    # -- status / halt / destroy ------------------------------------------------
    def status(self, name: str | None = None, live: bool = True) -> list[dict]:
        from .loader import discover

        if name:
            labs = [self.lab(name)]
        else:
            found, _ = discover(self.labs_dirs)
            labs = [Lab(l) for l in found if (paths.lab_home(l.name) / "state.json").exists()]
        out = []
        for lab in labs:
            state = lab.state()
            order = [k for k in state.steps]
            machines = {}
            live_states = {}
            if live and lab.vagrantfile.exists() and state.provider:
                try:
                    live_states = VagrantDriver(lab.home, lab.log, lab=lab.name, provider=state.provider).status()
                except VmdockError as exc:
                    live_states = {m.name: f"unknown ({exc.message})" for m in lab.loaded.lab.machines}
            for m in lab.loaded.lab.machines:
                rec = state.machines.get(m.name, {})
                ssh = rec.get("ssh")
                machines[m.name] = {
                    "state": live_states.get(m.name, "not_created" if not rec else "unknown"),
                    "ssh": f"{ssh['user']}@{ssh['host']}:{ssh['port']}" if ssh else None,
                }
            last = state.last_good_step(order)
            if last:
                last = state.steps[last].get("title") or last
            out.append(
                {
                    "lab": lab.name,
                    "provider": state.provider,
                    "phase": state.phase,
                    "machines": machines,
                    "steps_done": len(state.steps),
                    "last_good_step": last,
                    "last_error": state.last_error,
                    "home": str(lab.home),
                    "log": str(lab.log.path),
                }
            )
        return out

    def halt(self, name: str) -> None:
        lab = self.lab(name)
        with lab_lock(lab.home, lab.name, "halt"):
            state = lab.state()
            if not lab.vagrantfile.exists() or not state.provider:
                raise StateError("the lab has no machines", lab=lab.name)
            self._phase("halt")
            VagrantDriver(lab.home, lab.log, lab=lab.name, provider=state.provider).halt()
            state.phase = "halted"
            state.save()

    def destroy(self, name: str, keep_image: bool = False) -> list[str]:
        """Destroy the machines and everything vmdock made for them; return what was removed."""
        lab = self.lab(name)
        removed: list[str] = []
        with lab_lock(lab.home, lab.name, "destroy"):
            state = lab.state()
            lab.log.event(f"=== vmdock destroy {lab.name} ===")
            if lab.vagrantfile.exists() and state.provider:
                self._phase("vagrant destroy")
                VagrantDriver(lab.home, lab.log, lab=lab.name, provider=state.provider).destroy()
                removed.append(f"machines ({state.provider})")
            if state.provider in ("docker", None) and providers.docker_daemon()[0]:
                removed += self._docker_leftovers(lab, keep_image)
            for p in (lab.vagrantfile, lab.home / ".vagrant"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            state.reset()
            state.save()
        return removed

    def _docker_leftovers(self, lab: Lab, keep_image: bool) -> list[str]:
        """Containers, volumes and networks of this lab that Vagrant left, and unused machine images."""
        log = lab.log
        removed = []
        ids = run(["docker", "ps", "-aq", "--filter", f"label=vmdock.lab={lab.name}"], log).stdout.split()
        if ids:
            run(["docker", "rm", "-f", "-v", *ids], log)
            removed.append(f"{len(ids)} leftover container(s)")
        from .render import lab_network

        subnet = str(lab_network(lab.loaded.lab.chapter))
        nets = run(["docker", "network", "ls", "-q", "--filter", f"name=vagrant_network_{subnet}"], log).stdout.split()
        for net in nets:
            users = run(["docker", "network", "inspect", "-f", "{{len .Containers}}", net], log, check=False).stdout.strip()
            if users == "0":
                run(["docker", "network", "rm", net], log)
                removed.append(f"network {net[:12]}")
        # the machine image is shared by every lab's machines: remove it with the last of them
        if not keep_image and not run(["docker", "ps", "-aq", "--filter", "label=vmdock.lab"], log).stdout.split():
            removed += [f"image {i}" for i in machine_image.remove_machine_images(log)]
        return removed

    def ssh_argv(self, name: str, machine: str | None) -> list[str]:
        lab = self.lab(name)
        state = lab.state()
        if not state.machines:
            raise StateError("the lab is not up", lab=lab.name, hint=f"`vmdock up {lab.name}`")
        machine = machine or lab.loaded.lab.machines[0].name
        if machine not in state.machines:
            raise StateError(f"no machine {machine!r} (machines: {', '.join(state.machines)})", lab=lab.name)
        ssh = SshConfig.from_dict(state.machines[machine]["ssh"])
        argv = ["ssh", "-p", str(ssh.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-F", "/dev/null"]
        for key in ssh.identity_files:
            argv += ["-i", key]
        return argv + [f"{ssh.user}@{ssh.host}"]

    # -- helpers ------------------------------------------------------------
    def _phase(self, name: str) -> None:
        self.events.phase(name)

    def _line(self, source: str):
        return lambda line: self.events.line(source, line)
