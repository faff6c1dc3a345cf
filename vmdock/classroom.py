"""The classroom: lab images made from a lab that works, and `reset` back to them.

`vmdock image build LAB` brings the lab up (if it is not), runs its checks and
refuses a lab that fails them, then has the provider capture each machine as
a lab image (``vmdock.labimages``).  `vmdock reset LAB` throws the machines
away and makes them again from the images they came from: whatever a student
did inside, the lab is back where `up` left it.
"""
from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

from . import __version__, labimages, paths, providers, seats
from .errors import ProviderError, StateError
from .lifecycle import Phase
from .runlog import Log
from .state import lab_lock

if TYPE_CHECKING:
    from .engine import Engine
    from .labhome import LabHome, UpResult
    from .labimages import LabImage
    from .state import LabState


class Classroom:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.events = engine.events

    def seeds(
        self, home: LabHome, state: LabState, provider: providers.Provider, limit: int | None, seat: seats.Seat
    ) -> dict[str, LabImage]:
        """The lab images new machines are made from (machine → image): the ones the lab was
        made from before (`reset`), else the best match; {} when none fits."""
        found = [i for i in provider.lab_images(home.log) if i.lab == home.name]
        if state.lab_images:
            by_tag = {i.tag: i for i in found}
            if all(tag in by_tag for tag in state.lab_images.values()):
                return {m: by_tag[tag] for m, tag in state.lab_images.items()}
            self.events.info("the lab images this lab was made from are gone: the full path")
            return {}
        base = labimages.base_fingerprint(self.engine.settings, provider.name, provider.base_image())
        wanted = [item.key for item in self.engine.plan(home, state, {}, limit)[1]]
        choice = labimages.choose(found, home.machine_names, base, labimages.lab_fingerprint(base, home.loaded), wanted)
        for note in choice.notes:
            self.events.info(note)
        if choice.images:
            sample = next(iter(choice.images.values()))
            self.events.info(f"starting from the lab image {', '.join(i.tag for i in choice.images.values())} "
                             f"(built {sample.built_at}, {len(sample.steps)} items done); "
                             "`--no-image` takes the full path")
            made_on = sample.state.get("network")
            if made_on and made_on != str(seat.subnet):
                self.events.info(f"the lab image was made on the network {made_on}, which another lab holds here; "
                                 f"this lab has {seat.subnet}: the steps run again with its addresses")
        return choice.images

    def image_network(self, home: LabHome, provider: providers.Provider) -> ipaddress.IPv4Network | None:
        """The network block the newest lab image of this lab was made on (its steps used those
        addresses): the block a new seat asks for first, so the image fits it."""
        found = sorted((i for i in provider.lab_images(home.log) if i.lab == home.name and i.state.get("network")),
                       key=lambda i: i.built_at)
        if not found:
            return None
        try:
            net = ipaddress.ip_network(found[-1].state["network"])
        except ValueError:
            return None
        return net if isinstance(net, ipaddress.IPv4Network) else None

    def build_image(self, name: str, *, no_steps: bool = False) -> list[LabImage]:
        """Capture the lab's machines as lab images (one per machine).

        ``no_steps``: the student-mode lab (machines, Docker, base image, files; no steps);
        its checks are not run (they are meant to fail until the student has worked)."""
        engine = self.engine
        home = engine.lab(name)
        state = home.state()
        made = state.provider and state.machines
        provider = engine.provider_of(state) if made else engine.choose_provider(home, state)
        if not provider.supports_lab_images:
            raise ProviderError(f"the {provider.name} provider cannot capture lab images (not supported yet)",
                                lab=home.name)
        wanted = 0 if no_steps else None
        if state.phase != Phase.PROVISIONED or state.steps_upto != wanted or not self._all_running(home):
            engine.up(name, no_steps=no_steps)
        if not no_steps:
            _, results = engine.verify(name)
            failed = [r.name for r in results if not r.passed]
            if failed:
                raise StateError(
                    f"{len(failed)} check(s) fail ({', '.join(failed)}): a lab image is made only of a lab that passes "
                    "`vmdock verify`",
                    lab=home.name,
                    hint=f"`vmdock verify {home.name}` shows them; fix the lab, then build again",
                )
        with lab_lock(home.home, home.name, "image build"):
            return self._capture(home, engine.provider_of(home.state()))

    def _all_running(self, home: LabHome) -> bool:
        state = home.state()
        if not state.provider or not state.machines:
            return False
        states = self.engine.machine_states(home, state, self.engine.provider_of(state))
        return all(s == providers.RUNNING for s in states.values())

    def _capture(self, home: LabHome, provider: providers.Provider) -> list[LabImage]:
        state = home.state()
        base = labimages.base_fingerprint(self.engine.settings, provider.name, provider.base_image())
        fingerprint = labimages.lab_fingerprint(base, home.loaded)
        done = [key for key in state.plan if key in state.steps]
        steps = len(home.loaded.lab.steps) if state.steps_upto is None else state.steps_upto
        snapshot = {
            "steps": {key: state.steps[key] for key in done},
            "exports": state.exports,
            "secrets": state.secrets,
            "network": state.network,  # the steps ran with these addresses; a new seat asks for the same block
            "machines": {m: {"origin": rec.get("origin") or rec["id"], "boots": rec.get("boots", 0)}
                         for m, rec in state.machines.items()},
        }
        made = []
        built_at = labimages.now()
        for machine in home.machine_names:
            image = labimages.LabImage(
                labimages.image_tag(home.name, machine, fingerprint, steps), home.name, machine, provider.name,
                fingerprint, base, tuple(done), built_at, __version__, state=snapshot,
            )
            self.events.task(f"capture {machine}")
            t0 = time.monotonic()
            state.capturing = [machine]  # a killed capture leaves the machine half-way: `up` puts it back
            state.save()
            provider.capture(home.instance, machine, image.tag, image.labels(), home.log)
            self.events.task_done(f"capture {machine} → {image.tag}", time.monotonic() - t0)
            made.append(image)
        # the machines are now what these images hold: `reset` goes back to them
        state.lab_images = {image.machine: image.tag for image in made}
        state.capturing = []
        state.save()
        return made

    def recover(self, home: LabHome, state: LabState) -> None:
        """Put back the machines an `image build` stopped half-way through capturing (killed)."""
        if not state.capturing or not state.provider:
            return
        provider = self.engine.provider_of(state)
        for machine in state.capturing:
            if machine in state.machines:
                self.events.info(f"{machine}: a `vmdock image build` was stopped while capturing it; putting it back")
                provider.recover_capture(home.instance, machine, home.log)
        state.capturing = []
        state.save()

    def prune(self, everything: bool = False) -> list[providers.Pruned]:
        """Remove the shared images no lab on this host uses (every provider's); say what was kept, why."""
        log = Log(paths.vmdock_home() / "prune.log")
        log.event("=== vmdock prune ===")
        out: list[providers.Pruned] = []
        for name in providers.NAMES:
            out += providers.get(name, self.engine.settings.apt_mirror).prune(log, everything=everything)
        return out

    def list_images(self) -> list[LabImage]:
        """Every lab image of every provider on this host."""
        from . import paths
        from .runlog import Log

        log = Log(paths.vmdock_home() / "images.log")
        return [image for name in providers.NAMES for image in providers.get(name).lab_images(log)]

    def reset(self, name: str) -> UpResult:
        """Make the lab's machines anew as `up` left them: from their lab images (in student mode,
        the no-steps state), else along the full path."""
        engine = self.engine
        home = engine.lab(name)
        with lab_lock(home.home, home.name, "reset"):
            state = home.state()
            if not state.provider or not state.machines:
                raise StateError("the lab is not up: nothing to reset", lab=home.name, hint=f"`vmdock up {home.name}`")
            if not state.lab_images:
                self.events.info("the lab was not made from lab images: reset takes the full path "
                                 f"(`vmdock image build {home.name}` makes one)")
            removal = engine.remove_machines(home, state)
            limit = state.steps_upto
            state.machines.clear()
            state.steps.clear()
            state.move(Phase.RENDERED)
            state.save()
        try:
            return engine.up(name, upto=None if limit is None else str(limit), use_images=True)
        finally:
            removal.finish()  # the old disks go once the new machines run: not competing with their start
