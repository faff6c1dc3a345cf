"""A lab's machines as they stand: naming a lab, its provider, its machines' states, and the
commands that look at them or stop them (status, halt, destroy, ssh, the host's instances).

``vmdock.engine.Engine`` builds on this with what brings a lab up (render, up, provision,
verify).  Raises ``VmdockError``s; never prints, never exits.  Heavy modules (python-vagrant,
Fabric) are imported where they are used.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths, providers, seats
from .driver import machine_id
from .errors import StateError, VmdockError
from .events import Events
from .labhome import LabHome, loaded_from, ssh_argv, status_row
from .lifecycle import Phase
from .loader import resolve
from .providers import NOT_CREATED, Provider
from .providers.base import Removal
from .runlog import Log
from .settings import Settings
from .state import LabState, lab_lock

if TYPE_CHECKING:
    from .transport import Transport


def _vagrant_driver(root: Path, log: Log, *, lab: str, provider: str, on_line=None):
    from .driver import VagrantDriver

    return VagrantDriver(root, log, lab=lab, provider=provider, on_line=on_line)


def _ssh_transport(machine: str, ssh, log: Log, **kw) -> Transport:
    from .transport import Transport

    return Transport(machine, ssh, log, **kw)


class LabControl:
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

    # -- naming -------------------------------------------------------------------
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

    # -- what the lab's machines are ----------------------------------------------
    def port_offset(self, name: str) -> int:
        """The seat's port offset: as the settings say, else as the lab's state recorded it."""
        offset = self.settings.port_offset
        return self.lab(name).state().port_offset if offset is None else offset

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

