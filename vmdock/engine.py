"""The lab lifecycle: render → vagrant up → provision → verify → destroy.

Pure orchestration over the modules of each step; reports progress through
``Events`` and raises ``VmdockError``s.  Never prints, never exits.  What
differs between providers is asked of the provider (``vmdock.providers``);
where a lab stands is its ``lifecycle.Phase``.

Naming a lab, its provider and machine states, status, halt and destroy are
``vmdock.labcontrol.LabControl``'s, which ``Engine`` builds on.  Heavy modules
(Fabric, python-vagrant, Jinja) are imported where they are used, so
`vmdock status` stays quick.
"""
from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import hostports, preflight, seats
from .driver import machine_id
from .errors import CommandError, StateError, VmdockError
from .labcontrol import LabControl
from .labhome import LabHome, UpResult, refuse_fewer_steps, step_limit, step_number
from .lifecycle import Phase
from .providers import NOT_CREATED, RUNNING, Provider
from .state import LabState, lab_lock

if TYPE_CHECKING:
    from .labcontext import Context
    from .provision import Item
    from .transport import Transport
    from .verify import CheckResult


class Engine(LabControl):
    """What brings a lab up and checks it; naming, states, status, halt and destroy are ``LabControl``'s."""

    # -- render ---------------------------------------------------------------
    def _vagrantfile(self, home: LabHome, provider: Provider, seat: seats.Seat, *, build: bool,
                     lab_images: dict | None = None) -> str:
        from .render import RenderOptions, render

        values = provider.render_options(home.loaded, home.log, self.events, build=build, lab_images=lab_images)
        return render(home.loaded, RenderOptions(provider.name, values), seat)

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
                if state.capturing:
                    from .classroom import Classroom

                    Classroom(self).recover(home, state)
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
                }, refused=isinstance(exc, hostports.PortsTaken))
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
            self._record_machines(home, state, provider, driver, ids, boots, origins)
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

    @staticmethod
    def _record_machines(home: LabHome, state: LabState, provider: Provider, driver, ids: dict[str, str],
                         boots: dict[str, int], origins: dict[str, str | None]) -> None:
        """Each machine's id, boot count, SSH settings and, when made from a lab image, its origin."""
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
        from .labcontext import Context
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
