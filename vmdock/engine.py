"""The lab lifecycle: render → vagrant up → provision → verify → destroy.

Pure orchestration over the modules of each step; reports progress through
``Events`` and raises ``VmdockError``s.  Never prints, never exits.  What
differs between providers is asked of the provider (``vmdock.providers``);
where a lab stands is its ``lifecycle.Phase``.

Heavy modules (Fabric, python-vagrant, Jinja) are imported where they are
used, so `vmdock list` and `vmdock status` stay quick.
"""
from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths, providers, seats
from .driver import machine_id
from .errors import CommandError, StateError, VmdockError
from .events import Events
from .lifecycle import Phase
from .loader import LoadedLab, resolve
from .providers import NOT_CREATED, RUNNING, Provider
from .runlog import Log
from .settings import Settings
from .state import LabState, lab_lock

if TYPE_CHECKING:
    from .provision import Context
    from .transport import Transport
    from .verify import CheckResult


@dataclass
class UpResult:
    lab: str
    provider: str
    ran: int
    skipped: int
    seconds: float


class LabHome:
    """One lab's runtime folder: Vagrantfile, .vagrant/, state.json, vmdock.log."""

    def __init__(self, loaded: LoadedLab):
        self.loaded = loaded
        self.name = loaded.name
        self.home = paths.lab_home(self.name)
        self.vagrantfile = self.home / "Vagrantfile"
        self.log = Log(self.home / "vmdock.log")
        self.instance = seats.Instance(paths.vmdock_home(), self.name)

    def state(self) -> LabState:
        return LabState.load(self.home / "state.json", self.name)

    @property
    def machine_names(self) -> list[str]:
        return [m.name for m in self.loaded.lab.machines]


def _vagrant_driver(root: Path, log: Log, *, lab: str, provider: str, on_line=None):
    from .driver import VagrantDriver

    return VagrantDriver(root, log, lab=lab, provider=provider, on_line=on_line)


def _ssh_transport(machine: str, ssh, log: Log, **kw) -> Transport:
    from .transport import Transport

    return Transport(machine, ssh, log, **kw)


class Engine:
    """``provider``, ``driver_factory`` and ``transport_factory`` replace the real ones in unit tests."""

    def __init__(
        self,
        settings: Settings | None = None,
        events: Events | None = None,
        labs_dirs=None,
        *,
        provider: Provider | None = None,
        driver_factory: Callable[..., Any] = _vagrant_driver,
        transport_factory: Callable[..., Any] = _ssh_transport,
    ):
        self.settings = settings or Settings.from_env()
        self.events = events or Events()
        self.labs_dirs = labs_dirs
        self._forced_provider = provider
        self._driver_factory = driver_factory
        self._transport_factory = transport_factory

    # -- naming ------------------------------------------------------------
    def lab(self, name: str) -> LabHome:
        return LabHome(resolve(name, self.labs_dirs))

    def _driver(self, home: LabHome, provider: str):
        return self._driver_factory(
            home.home, home.log, lab=home.name, provider=provider, on_line=lambda line: self.events.line("vagrant", line)
        )

    # -- render ---------------------------------------------------------------
    def _provider(self, home: LabHome, state: LabState) -> Provider:
        if self._forced_provider is not None:
            return self._forced_provider
        requested = self.settings.provider
        if state.provider and state.machines:
            if requested and requested != state.provider:
                raise StateError(
                    f"the lab is up with the {state.provider} provider, not {requested}",
                    lab=home.name,
                    hint=f"`vmdock destroy {home.name}` first to change provider",
                )
            return providers.get(state.provider, self.settings.apt_mirror)
        provider, why = providers.choose(requested, "--provider/VMDOCK_PROVIDER", self.settings.apt_mirror)
        self.events.info(f"provider: {why}")
        return provider

    def _vagrantfile(self, home: LabHome, provider: Provider, seat: seats.Seat, *, build: bool) -> str:
        from .render import RenderOptions, render

        values = provider.render_options(home.loaded, home.log, self.events, build=build)
        return render(home.loaded, RenderOptions(provider.name, values), seat)

    def _seat(self, home: LabHome, state: LabState) -> seats.Seat:
        """The instance's network (leased host-wide, kept in the state) and port offset."""
        from .hostscan import claim_network

        subnet = claim_network(home.instance, home.log)
        if state.network != str(subnet):
            state.network = str(subnet)
            state.save()
        offset = self.settings.port_offset
        return seats.Seat(home.instance, subnet, state.port_offset if offset is None else offset)

    def port_offset(self, name: str) -> int:
        """The seat's port offset: as the settings say, else as the lab's state recorded it."""
        offset = self.settings.port_offset
        return self.lab(name).state().port_offset if offset is None else offset

    def render(self, name: str) -> Path:
        """Write the Vagrantfile; never builds anything (the machine image is built by `up`)."""
        from .render import write_atomic

        home = self.lab(name)
        with lab_lock(home.home, home.name, "render"):
            state = home.state()
            provider = self._provider(home, state)
            write_atomic(home.vagrantfile, self._vagrantfile(home, provider, self._seat(home, state), build=False))
        return home.vagrantfile

    # -- up ---------------------------------------------------------------------
    def up(self, name: str) -> UpResult:
        from . import needs

        home = self.lab(name)
        start = time.monotonic()
        # containerlab's rule: find out what is missing before creating anything (no state, no lock file)
        image_tarballs = needs.check(home.loaded.lab, self.settings, loaded=home.state().images)
        with lab_lock(home.home, home.name, "up"):
            state = home.state()
            home.log.event(f"=== vmdock up {home.name} ===")
            try:
                return self._up(home, state, start, image_tarballs)
            except VmdockError as exc:
                exc.with_context(lab=home.name, log=home.log.path)
                self._failed(home, state, {
                    "message": exc.message,
                    "machine": exc.machine,
                    "step": exc.step,
                    "command": exc.command,
                    "exit_code": exc.exit_code,
                    "stderr_tail": exc.stderr_tail,
                })
                raise
            except KeyboardInterrupt:
                self._failed(home, state, {"message": "interrupted (Ctrl-C)"})
                raise

    @staticmethod
    def _failed(home: LabHome, state: LabState, error: dict) -> None:
        state.last_error = error
        state.move(Phase.FAILED)
        state.save()
        home.log.event(f"failed: {error['message']}")

    def _up(self, home: LabHome, state: LabState, start: float, image_tarballs: dict) -> UpResult:
        from .render import write_atomic

        provider = self._provider(home, state)
        seat = self._seat(home, state)
        text = self._vagrantfile(home, provider, seat, build=True)
        if not home.vagrantfile.exists():
            write_atomic(home.vagrantfile, text)  # nothing to compare with; `vagrant status` reads it
        driver = self._driver(home, provider.name)
        statuses = self._preflight(home, state, provider, driver, seat, text)
        changed = write_atomic(home.vagrantfile, text)
        state.port_offset = seat.port_offset
        state.provider = provider.name
        state.lab_folder = str(home.loaded.folder)
        if state.phase in (Phase.NEW, Phase.DESTROYED):
            state.move(Phase.RENDERED)
        state.save()

        self.events.task("machines")
        t0 = time.monotonic()
        ids, boots, down = self._boot(home, state, provider, driver, statuses, seat=seat, settings_changed=changed)
        if down or set(state.machines) != set(ids) or any(
            rec.get("id") != ids[m] or "ssh" not in rec for m, rec in state.machines.items()
        ):
            configs = driver.ssh_config()
            missing = [m for m in ids if m not in configs]
            if missing:
                raise CommandError(
                    f"vagrant ssh-config has no entry for {', '.join(missing)}", lab=home.name, log=home.log.path
                )
            state.machines = {m: {"id": ids[m], "boots": boots[m], "ssh": configs[m].to_dict()} for m in ids}
        if state.phase != Phase.PROVISIONED or down:
            state.move(Phase.BOOTED)
        state.save()
        self.events.task_done("machines", time.monotonic() - t0)

        ran, total = self._provision(home, state, {m: f"{ids[m]}#{boots[m]}" for m in ids}, image_tarballs)
        state.move(Phase.PROVISIONED)
        state.last_error = None
        state.save()
        return UpResult(home.name, provider.name, ran, total - ran, time.monotonic() - start)

    def _preflight(self, home: LabHome, state: LabState, provider: Provider, driver, seat: seats.Seat,
                   vagrantfile: str) -> dict[str, str]:
        """Before `vagrant up`: remove the instance's machines Vagrant does not know (a run
        killed inside `vagrant up` leaves them, holding its ports), refuse taken host ports
        naming their holder, make the instance's network.  Returns the machines' states."""
        inst = home.instance
        found = provider.machines(inst, home.log)
        if found:
            known = [machine_id(home.home, d.name) for d in (home.home / ".vagrant" / "machines").glob("*")]
            lost = seats.orphans(found, inst.id, [k for k in known if k])
            if lost:
                self.events.info(
                    f"removing {', '.join(m.name for m in lost)}: machine(s) of this lab that Vagrant did not know "
                    "(left by a `vmdock up` stopped inside `vagrant up`)"
                )
                provider.remove(lost, home.log)
        statuses = self.machine_states(home, state, provider, driver)
        recreated = provider.on_settings_changed == "recreate" and home.vagrantfile.read_text(encoding="utf-8") != vagrantfile
        starting = [m for m in home.loaded.lab.machines if recreated or statuses.get(m.name) != RUNNING]
        if starting:
            self._check_ports(home, starting, seat)
            provider.prepare_network(seat, home.log)
        return statuses

    @staticmethod
    def _check_ports(home: LabHome, machines: list, seat: seats.Seat) -> None:
        from .hostscan import check_ports

        ports = seats.effective_ports(machines, seat.port_offset, str(home.loaded.file))
        check_ports(home.instance, ports, seat.port_offset, home.log)

    def _boot(self, home: LabHome, state: LabState, provider: Provider, driver, statuses: dict[str, str], *,
              seat: seats.Seat, settings_changed: bool):
        """Bring every machine up from ``statuses``: (machine ids, boot counts, the machines that were down)."""
        created = [m for m, st in statuses.items() if st != NOT_CREATED]
        if settings_changed and created and state.machines:
            # The machines' settings (ports, memory, box, image) changed since they were made.
            if provider.on_settings_changed == "recreate":
                self.events.info(f"machine settings changed: recreating {', '.join(created)} (their steps run again)")
                driver.destroy()
                statuses = {m: NOT_CREATED for m in statuses}
            else:
                self.events.info(f"machine settings changed: vagrant reload {', '.join(created)}")
                driver.reload()
                statuses = driver.status()
        down = [m for m, s in statuses.items() if s != RUNNING]
        if down:
            self.events.info(f"vagrant up: {', '.join(down)} ({provider.name})")
            try:
                driver.up()
            except CommandError as exc:
                if "already in use" in (exc.stderr_tail or ""):  # taken since the preflight: say by whom
                    self._check_ports(home, home.loaded.lab.machines, seat)
                if provider.up_hint and not exc.hint:
                    exc.hint = provider.up_hint
                raise
        ids = {m: machine_id(home.home, m) or "" for m in home.machine_names}
        # A machine that was halted and started again keeps its id but lost its
        # running daemons: count its boots, so its provisioning runs again.
        boots = {m: state.machines.get(m, {}).get("boots", 0) for m in ids}
        for m in down:
            if m in boots and state.machines.get(m, {}).get("id") == ids[m]:
                boots[m] += 1
        return ids, boots, down

    def machine_states(self, home: LabHome, state: LabState, provider: Provider, driver=None, *, refresh=False) -> dict[str, str]:
        """Machine → Vagrant state: the provider's own answer when it agrees with the state
        file and with Vagrant's machine folders, else (or with ``refresh``) `vagrant status`."""
        names = home.machine_names
        native = None if refresh else provider.native_status(home.instance, names, home.log)
        if native is not None:
            disagree = [
                m for m in names
                if (native[m] != NOT_CREATED) != (m in state.machines)
                or (native[m] != NOT_CREATED) != bool(machine_id(home.home, m))
            ]
            if not disagree:
                return native
            home.log.event(f"{provider.name} and the state file disagree on {', '.join(disagree)}: asking Vagrant")
        driver = driver or self._driver(home, provider.name)
        return driver.status()

    def _provision(self, home: LabHome, state: LabState, machine_ids: dict[str, str], image_tarballs: dict) -> tuple[int, int]:
        """Run the plan's items not done yet: (how many ran, how many in the plan)."""
        from .provision import build_plan, run_plan

        ctx = self._context(home, state)
        ctx.image_tarballs = image_tarballs
        plan = build_plan(ctx, machine_ids)
        state.plan = [item.key for item in plan]
        state.save()
        if all(state.is_done(item.key, item.fingerprint) for item in plan):
            for item in plan:
                self.events.step_done(item.machine, item.key, item.title, 0.0, skipped=True)
            return 0, len(plan)
        transports = self._transports(home, state)
        try:
            return run_plan(ctx, plan, transports, self.events), len(plan)
        finally:
            for t in transports.values():
                t.close()

    def _context(self, home: LabHome, state: LabState) -> Context:
        from . import images
        from .provision import Context
        from .render import machine_ips

        if not state.network:
            raise StateError("the lab has no network yet", lab=home.name, hint=f"`vmdock up {home.name}`")
        cache = images.rootfs_path()
        return Context(
            loaded=home.loaded,
            state=state,
            settings=self.settings,
            log=home.log,
            ips=machine_ips(home.loaded, ipaddress.IPv4Network(state.network)),
            base_tarball=cache if cache.exists() else None,
            base_cache=cache,
        )

    def _transports(self, home: LabHome, state: LabState) -> dict[str, Transport]:
        from .driver import SshConfig

        return {
            m: self._transport_factory(
                m,
                SshConfig.from_dict(rec["ssh"]),
                home.log,
                lab=home.name,
                connect_timeout=self.settings.connect_timeout,
                on_line=lambda machine, line: self.events.line(machine, line),
            )
            for m, rec in state.machines.items()
        }

    # -- verify -------------------------------------------------------------
    def verify(self, name: str, only: list[str] | None = None) -> tuple[LabHome, list[CheckResult]]:
        from .verify import run_checks

        home = self.lab(name)
        state = home.state()
        if state.phase != Phase.PROVISIONED or not state.machines:
            raise StateError(
                f"the lab is not up (state: {state.phase})",
                lab=home.name,
                hint=f"`vmdock up {home.name}` first" + (f"; last error: {state.last_error['message']}" if state.last_error else ""),
            )
        home.log.event(f"=== vmdock verify {home.name} ===")
        ctx = self._context(home, state)
        transports = self._transports(home, state)
        try:
            results = run_checks(ctx, transports, self.events, only)
        finally:
            for t in transports.values():
                t.close()
        if only and not results:
            raise StateError(f"no check named {', '.join(only)}", lab=home.name)
        return home, results

    # -- status / halt / destroy ------------------------------------------------
    def status(self, name: str | None = None, live: bool = True, refresh: bool = False) -> list[dict]:
        """Each lab's state; ``live``: ask the provider how the machines are (``refresh``: ask Vagrant)."""
        from .loader import discover

        if name:
            homes = [self.lab(name)]
        else:
            found, _ = discover(self.labs_dirs)
            homes = [LabHome(l) for l in found if (paths.lab_home(l.name) / "state.json").exists()]
        return [self._status_row(home, live, refresh) for home in homes]

    def _status_row(self, home: LabHome, live: bool, refresh: bool) -> dict:
        state = home.state()
        live_states: dict[str, str] = {}
        if live and home.vagrantfile.exists() and state.provider:
            try:
                provider = providers.get(state.provider)
                live_states = self.machine_states(home, state, provider, refresh=refresh)
            except VmdockError as exc:
                live_states = {m: f"unknown ({exc.message})" for m in home.machine_names}
        machines = {}
        for m in home.machine_names:
            rec = state.machines.get(m, {})
            ssh = rec.get("ssh")
            machines[m] = {
                "state": live_states.get(m, NOT_CREATED if not rec else "unknown"),
                "ssh": f"{ssh['user']}@{ssh['host']}:{ssh['port']}" if ssh else None,
            }
        last = state.last_good_step()
        ports = seats.effective_ports(home.loaded.lab.machines, state.port_offset, str(home.loaded.file))
        return {
            "lab": home.name,
            "instance": home.instance.id,
            "network": state.network,
            "port_offset": state.port_offset,
            "ports": [{"machine": p.machine, "guest": p.guest, "host": p.host, "host_ip": p.host_ip, "protocol": p.protocol}
                      for p in ports],
            "provider": state.provider,
            "phase": state.phase.value,
            "machines": machines,
            "steps_done": len(state.steps),
            "last_good_step": (state.steps[last].get("title") or last) if last else None,
            "last_error": state.last_error,
            "home": str(home.home),
            "log": str(home.log.path),
        }

    def halt(self, name: str) -> None:
        home = self.lab(name)
        with lab_lock(home.home, home.name, "halt"):
            state = home.state()
            if not home.vagrantfile.exists() or not state.provider:
                raise StateError("the lab has no machines", lab=home.name)
            self.events.task("halt")
            t0 = time.monotonic()
            self._driver(home, state.provider).halt()
            state.move(Phase.HALTED)
            state.save()
            self.events.task_done("halt", time.monotonic() - t0)

    def destroy(self, name: str) -> list[str]:
        """Destroy the machines and what vmdock made for them; return what was removed.

        Shared images (the docker machine image, lab images) are kept, as Vagrant
        keeps boxes: `vmdock prune` removes the unused ones.
        """
        home = self.lab(name)
        removed: list[str] = []
        with lab_lock(home.home, home.name, "destroy"):
            state = home.state()
            home.log.event(f"=== vmdock destroy {home.name} ===")
            if home.vagrantfile.exists() and state.provider:
                self.events.task("destroy")
                t0 = time.monotonic()
                native = providers.get(state.provider).destroy(home.instance, home.log)
                if native is None:
                    self._driver(home, state.provider).destroy()
                    native = [f"machines ({state.provider})"]
                removed += native
                self.events.task_done("destroy", time.monotonic() - t0)
            # what Vagrant left; with no provider on record, whatever any provider may have left
            names = [state.provider] if state.provider else list(providers.NAMES)
            for p in names:
                removed += providers.get(p).cleanup(home.instance, home.log)
            with seats.host_lock(f"giving back {home.name}'s network"):
                removed += [f"network lease {net}" for net in seats.release_subnet(home.instance)]
            for path in (home.vagrantfile, home.home / ".vagrant"):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            state.reset()
            state.save()
        return removed

    def instances(self) -> list[dict]:
        """Every vmdock instance on this host, whoever's home it lives in (`vmdock status --all`)."""
        from .hostscan import instances

        return instances(Log(paths.vmdock_home() / "host.log"))

    def prune(self, everything: bool = False) -> list[providers.Pruned]:
        """Remove the shared images no lab on this host uses (every provider's); say what was kept, why."""
        log = Log(paths.vmdock_home() / "prune.log")
        log.event("=== vmdock prune ===")
        out: list[providers.Pruned] = []
        for name in providers.NAMES:
            out += providers.get(name, self.settings.apt_mirror).prune(log, everything=everything)
        return out

    def ssh_argv(self, name: str, machine: str | None) -> list[str]:
        from .driver import SshConfig

        home = self.lab(name)
        state = home.state()
        if not state.machines:
            raise StateError("the lab is not up", lab=home.name, hint=f"`vmdock up {home.name}`")
        machine = machine or home.machine_names[0]
        if machine not in state.machines:
            raise StateError(f"no machine {machine!r} (machines: {', '.join(state.machines)})", lab=home.name)
        ssh = SshConfig.from_dict(state.machines[machine]["ssh"])
        argv = ["ssh", "-p", str(ssh.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-F", "/dev/null"]
        for key in ssh.identity_files:
            argv += ["-i", key]
        return argv + [f"{ssh.user}@{ssh.host}"]
