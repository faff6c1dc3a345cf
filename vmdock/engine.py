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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths, preflight, providers, seats
from .driver import machine_id
from .errors import CommandError, StateError, VmdockError
from .events import Events
from .labhome import (
    LabHome,
    UpResult,
    loaded_from,
    refuse_fewer_steps,
    ssh_argv,
    status_row,
    step_limit,
    step_number,
)
from .lifecycle import Phase
from .loader import resolve
from .providers import NOT_CREATED, RUNNING, Provider
from .providers.base import Removal
from .runlog import Log
from .settings import Settings
from .state import LabState, lab_lock

if TYPE_CHECKING:
    from .provision import Context, Item
    from .transport import Transport
    from .verify import CheckResult


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

    def driver(self, home: LabHome, provider: str):
        return self._driver_factory(
            home.home, home.log, lab=home.name, provider=provider,
            on_line=lambda line: self.events.line("vagrant", line),
        )

    def provider_of(self, state: LabState) -> Provider:
        """The provider the lab's machines were made with (state.provider must be set)."""
        assert state.provider
        return self._forced_provider or providers.get(state.provider, self.settings.apt_mirror)

    # -- render ---------------------------------------------------------------
    def choose_provider(self, home: LabHome, state: LabState) -> Provider:
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

    def _vagrantfile(self, home: LabHome, provider: Provider, seat: seats.Seat, *, build: bool,
                     lab_images: dict | None = None) -> str:
        from .render import RenderOptions, render

        values = provider.render_options(home.loaded, home.log, self.events, build=build, lab_images=lab_images)
        return render(home.loaded, RenderOptions(provider.name, values), seat)

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
            provider = self.choose_provider(home, state)
            seat = preflight.claim_seat(home, state, self.settings.port_offset)
            text = self._vagrantfile(home, provider, seat, build=False, lab_images=state.lab_images)
            write_atomic(home.vagrantfile, text)
        return home.vagrantfile

    # -- up ---------------------------------------------------------------------
    def up(self, name: str, *, upto: str | None = None, no_steps: bool = False, use_images: bool = True) -> UpResult:
        """Bring the lab up: every step, or none (``no_steps``: student mode), or up to ``upto``
        (a step's number or name).  ``use_images``: start from a matching lab image."""
        from . import needs

        home = self.lab(name)
        limit = 0 if no_steps else step_limit(home.loaded, upto)
        start = time.monotonic()
        # containerlab's rule: find out what is missing before creating anything (no state, no lock file)
        image_tarballs = needs.check(
            home.loaded.lab, self.settings, loaded=home.state().images, on_info=self.events.info
        )
        with lab_lock(home.home, home.name, "up"):
            state = home.state()
            home.log.event(f"=== vmdock up {home.name} ===")
            try:
                return self._up(home, state, start, image_tarballs, limit, use_images)
            except VmdockError as exc:
                exc.with_context(lab=home.name, log=home.log.path)
                self._failed(home, state, {
                    "message": exc.message,
                    "machine": exc.machine,
                    "step": exc.step,
                    "command": exc.command,
                    "exit_code": exc.exit_code,
                    "stderr_tail": exc.stderr_tail,
                }, refused=isinstance(exc, seats.PortsTaken))
                raise
            except KeyboardInterrupt:
                self._failed(home, state, {"message": "interrupted (Ctrl-C)"})
                raise

    @staticmethod
    def _failed(home: LabHome, state: LabState, error: dict, *, refused: bool = False) -> None:
        """Record the error; ``refused``: nothing was changed, the lab stays in its phase."""
        state.last_error = error
        if not refused:
            state.move(Phase.FAILED)
        state.save()
        home.log.event(f"failed: {error['message']}")

    def _up(self, home: LabHome, state: LabState, start: float, image_tarballs: dict, limit: int | None,
            use_images: bool) -> UpResult:
        from .render import write_atomic

        refuse_fewer_steps(home, state, limit)
        provider = self.choose_provider(home, state)
        from .classroom import Classroom

        from_images = use_images and not state.machines and provider.supports_lab_images
        image_network = Classroom(self).image_network(home, provider) if from_images and not state.network else None
        seat = preflight.claim_seat(home, state, self.settings.port_offset, image_network)  # the plan needs it
        seeds = Classroom(self).seeds(home, state, provider, limit, seat) if from_images else {}
        if not use_images and not state.machines:
            state.lab_images = {}
        lab_images = {m: image.tag for m, image in seeds.items()} or state.lab_images
        text = self._vagrantfile(home, provider, seat, build=True, lab_images=lab_images)
        if not home.vagrantfile.exists():
            write_atomic(home.vagrantfile, text)  # nothing to compare with; `vagrant status` reads it
        driver = self.driver(home, provider.name)
        preflight.remove_orphans(home, provider, self.events.info)
        statuses = self.machine_states(home, state, provider, driver)
        recreated = provider.on_settings_changed == "recreate" and home.vagrantfile.read_text(encoding="utf-8") != text
        preflight.before_up(home, provider, seat, statuses, recreated)
        changed = write_atomic(home.vagrantfile, text)
        state.port_offset = seat.port_offset
        state.provider = provider.name
        state.lab_folder = str(home.loaded.folder)
        state.lab_images = dict(lab_images)
        if state.phase in (Phase.NEW, Phase.DESTROYED):
            state.move(Phase.RENDERED)
        state.save()

        self.events.task("machines")
        t0 = time.monotonic()
        ids, boots, down = self._boot(home, state, provider, driver, statuses, seat=seat, settings_changed=changed)
        origins = {m: state.machines.get(m, {}).get("origin") for m in ids}
        if seeds:
            snapshot = next(iter(seeds.values())).state
            for m in ids:
                provider.restore(home.instance, m, home.log)
                origins[m], boots[m] = snapshot["machines"][m]["origin"], snapshot["machines"][m]["boots"]
            state.steps = dict(snapshot["steps"])
            state.exports.update(snapshot.get("exports", {}))
            state.secrets.update(snapshot.get("secrets", {}))
        if seeds or down or set(state.machines) != set(ids) or any(
            rec.get("id") != ids[m] or "ssh" not in rec for m, rec in state.machines.items()
        ):
            configs = provider.ssh_configs(home.instance, list(ids), home.log) or driver.ssh_config()
            missing = [m for m in ids if m not in configs]
            if missing:
                raise CommandError(
                    f"vagrant ssh-config has no entry for {', '.join(missing)}", lab=home.name, log=home.log.path
                )
            state.machines = {m: {"id": ids[m], "boots": boots[m], "ssh": configs[m].to_dict()} for m in ids}
            for m, origin in origins.items():
                if origin:
                    state.machines[m]["origin"] = origin  # made from a lab image: the captured machine's identity
        if state.phase != Phase.PROVISIONED or down:
            state.move(Phase.BOOTED)
        state.save()
        self.events.task_done("machines", time.monotonic() - t0)

        ran, total = self._provision(home, state, image_tarballs, limit)
        state.steps_upto = limit
        state.move(Phase.PROVISIONED)
        state.last_error = None
        state.save()
        return UpResult(home.name, provider.name, ran, total - ran, time.monotonic() - start)

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
                try:
                    driver.up()
                except CommandError as exc:
                    if not provider.transient_up_failure(exc.stderr_tail or ""):
                        raise
                    self.events.info(f"vagrant up failed on a race ({provider.name}): once more")
                    driver.up()
            except CommandError as exc:
                if "already in use" in (exc.stderr_tail or ""):  # taken since the preflight: say by whom
                    preflight.ports(home, home.loaded.lab.machines, seat)
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

    def machine_states(
        self, home: LabHome, state: LabState, provider: Provider, driver=None, *, refresh=False
    ) -> dict[str, str]:
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
        driver = driver or self.driver(home, provider.name)
        states: dict[str, str] = driver.status()
        return states

    def plan(
        self, home: LabHome, state: LabState, image_tarballs: dict, limit: int | None
    ) -> tuple[Context, list[Item]]:
        """The provisioning plan, cut after the lab's step ``limit`` (None: every step).

        A machine's identity in the fingerprints is its id and boot count, or, when it was
        made from a lab image, those of the machine the image was captured from."""
        from .provision import build_plan

        ctx = self._context(home, state)
        ctx.image_tarballs = image_tarballs
        identities = {
            m: f"{rec.get('origin') or rec.get('id', '')}#{rec.get('boots', 0)}" for m, rec in state.machines.items()
        }
        plan = build_plan(ctx, identities)
        return ctx, [item for item in plan if item.builtin or limit is None or step_number(item.key) <= limit]

    def _provision(self, home: LabHome, state: LabState, image_tarballs: dict, limit: int | None) -> tuple[int, int]:
        """Run the plan's items not done yet: (how many ran, how many in the plan)."""
        from .provision import run_plan

        ctx, plan = self.plan(home, state, image_tarballs, limit)
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
        from .hostbuild import rootfs
        from .provision import Context
        from .render import machine_ips

        if not state.network:
            raise StateError("the lab has no network yet", lab=home.name, hint=f"`vmdock up {home.name}`")
        cache = rootfs.rootfs_path()
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
                hint=f"`vmdock up {home.name}` first"
                + (f"; last error: {state.last_error['message']}" if state.last_error else ""),
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
        else:  # every lab with state in this home, found through --labs-dir or through its state
            found = {lab.name: lab for lab in discover(self.labs_dirs)[0]}
            homes = []
            for state_file in sorted((paths.vmdock_home() / "labs").glob("*/state.json")):
                loaded = found.get(state_file.parent.name) or loaded_from(state_file)
                if loaded is not None and LabHome(loaded).state().phase is not Phase.DESTROYED:
                    homes.append(LabHome(loaded))
        return [self._status_row(home, live, refresh) for home in homes]

    def _status_row(self, home: LabHome, live: bool, refresh: bool) -> dict:
        state = home.state()
        live_states: dict[str, str] = {}
        if live and home.vagrantfile.exists() and state.provider:
            try:
                live_states = self.machine_states(home, state, self.provider_of(state), refresh=refresh)
            except VmdockError as exc:
                live_states = {m: f"unknown ({exc.message})" for m in home.machine_names}
        return status_row(home, state, live_states)

    def halt(self, name: str) -> None:
        home = self.lab(name)
        with lab_lock(home.home, home.name, "halt"):
            state = home.state()
            if not home.vagrantfile.exists() or not state.provider:
                raise StateError("the lab has no machines", lab=home.name)
            self.events.task("halt")
            t0 = time.monotonic()
            self.driver(home, state.provider).halt()
            state.move(Phase.HALTED)
            state.save()
            self.events.task_done("halt", time.monotonic() - t0)

    def destroy(self, name: str) -> list[str]:
        """Destroy the machines and what vmdock made for them; return what was removed.

        Shared images (the docker machine image, lab images) are kept, as Vagrant
        keeps boxes: `vmdock prune` removes the unused ones.
        """
        home = self.lab(name)
        if not home.state_file.exists():  # never up here (or destroyed): nothing to do, nothing written
            return []
        with lab_lock(home.home, home.name, "destroy"):
            state = home.state()
            home.log.event(f"=== vmdock destroy {home.name} ===")
            removed = []
            if home.vagrantfile.exists() and state.provider:
                removal = self.remove_machines(home, state)
                removal.finish()
                removed += removal.said
            # what Vagrant left; with no provider on record, whatever any provider may have left
            leftovers = [self.provider_of(state)] if state.provider else [providers.get(p) for p in providers.NAMES]
            for provider in leftovers:
                removed += provider.cleanup(home.instance, home.log)
            with seats.host_lock(f"giving back {home.name}'s network"):
                removed += [f"network lease {net}" for net in seats.release_subnet(home.instance)]
            home.vagrantfile.unlink(missing_ok=True)
            state.reset()  # the seat's port offset stays; `status` leaves the lab out
            state.save()
        return removed

    def remove_machines(self, home: LabHome, state: LabState) -> Removal:
        """Remove the lab's machines (the provider's quick way, else `vagrant destroy`) and
        Vagrant's folder of them; the caller holds the lab's lock and calls ``finish``."""
        provider = self.provider_of(state)
        self.events.task("destroy")
        t0 = time.monotonic()
        removal = provider.destroy(home.instance, home.log)
        if removal is None:
            self.driver(home, provider.name).destroy()
            removal = Removal([f"machines ({provider.name})"])
        shutil.rmtree(home.home / ".vagrant", ignore_errors=True)
        self.events.task_done("destroy", time.monotonic() - t0)
        return removal

    def instances(self) -> list[dict]:
        """Every vmdock instance on this host, whoever's home it lives in (`vmdock status --all`)."""
        from .hostscan import instances

        return instances(Log(paths.vmdock_home() / "host.log"))

    def ssh_argv(self, name: str, machine: str | None) -> list[str]:
        home = self.lab(name)
        return ssh_argv(home, home.state(), machine)

