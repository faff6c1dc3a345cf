"""The engine's orchestration with a fake provider, a fake Vagrant driver and a fake transport.

Pure logic only (resume, reload, recreate, boot counting, native status
against Vagrant's): the real thing runs in tests/test_e2e.py.
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
import yaml

from vmdock import hostports, hostscan, labimages
from vmdock.classroom import Classroom
from vmdock.driver import SshConfig
from vmdock.engine import Engine
from vmdock.errors import ConfigError, ProvisionError, StateError
from vmdock.events import Recorder
from vmdock.labimages import LabImage
from vmdock.lifecycle import Phase
from vmdock.providers import NOT_CREATED, RUNNING
from vmdock.providers.docker import DockerProvider, prune_verdicts
from vmdock.providers.libvirt import LibvirtProvider
from vmdock.settings import Settings
from vmdock.transport import Result

LAB = {
    "name": "ch97-engine",
    "chapter": 97,
    "title": "engine",
    "machines": [{"name": "web"}, {"name": "db"}],
    "steps": [
        {"name": f"step {i}", "run": f"echo {i}", "on": ["web"]} for i in range(1, 11)
    ]
    + [{"name": "on db", "run": "echo db", "on": ["db"]}],
    "checks": [{"name": "c", "type": "command", "run": "true"}],
}


class World:
    """What the fakes share: the machines' states, Vagrant calls, commands run."""

    def __init__(self, root: Path):
        self.root = root
        self.machines: dict[str, str] = {}  # machine → Vagrant state
        self.ids: dict[str, int] = {}
        self.calls: list[str] = []
        self.scripts: list[tuple[str, str]] = []  # (machine, script name)
        self.fail_step: str | None = None
        self.native_wrong = False
        self.fail_checks = False
        self.images: list = []  # lab images "captured" by the fake provider
        self.restored: list[str] = []
        self.leftovers: list[str] = []  # what the fake provider's cleanup says it removed


class FakeDriver:
    def __init__(self, world: World, names: list[str], root: Path, provider: str):
        self.world, self.names, self.root, self.provider = world, names, root, provider

    def _write_id(self, m: str) -> None:
        self.world.ids[m] = self.world.ids.get(m, 0) + 1
        f = self.root / ".vagrant" / "machines" / m / self.provider / "id"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"{m}-{self.world.ids[m]}")

    def status(self):
        self.world.calls.append("status")
        return {m: self.world.machines.get(m, NOT_CREATED) for m in self.names}

    def up(self, machine=None):
        self.world.calls.append("up")
        for m in self.names:
            if self.world.machines.get(m, NOT_CREATED) == NOT_CREATED:
                self._write_id(m)
            self.world.machines[m] = RUNNING

    def reload(self, machine=None):
        self.world.calls.append("reload")
        for m in self.names:
            self.world.machines[m] = RUNNING

    def halt(self, machine=None):
        self.world.calls.append("halt")
        for m in self.names:
            self.world.machines[m] = "stopped"

    def destroy(self, machine=None):
        self.world.calls.append("destroy")
        self.world.machines.clear()
        for m in self.names:
            for f in (self.root / ".vagrant" / "machines" / m).glob("*/id"):
                f.unlink()

    def ssh_config(self):
        self.world.calls.append("ssh-config")
        return {m: SshConfig("127.0.0.1", 2200 + i, "vagrant", ("/key",)) for i, m in enumerate(self.names)}


class FakeTransport:
    def __init__(self, world: World, machine: str):
        self.world, self.machine = world, machine

    def run_script(self, script, *, name, step=None, **kw):
        self.world.scripts.append((self.machine, name))
        if name == self.world.fail_step:
            raise ProvisionError("failed on purpose", step=step)
        if name == "check" and self.world.fail_checks:
            return Result(1, "", "broken on purpose", 0.0)
        return Result(0, "", "", 0.0)

    def run(self, cmd, check=True, **kw):
        return Result(0, "", "", 0.0)  # the base image is present already

    def put_bytes(self, data, remote, mode=0o644):
        pass

    def put_file(self, local, remote):
        pass

    def connect(self, wait=0):
        pass

    def close(self):
        pass


def fake_provider(world: World, base: type):
    class Fake(base):  # type: ignore[misc, valid-type]
        def render_options(self, lab, log, events, *, build=True, lab_images=None):
            return {"machine_image": "vmdock/fake:1", "create_args": [], "domain_type": "qemu",
                    "lab_images": lab_images or {}}

        def lab_images(self, log):
            return list(world.images)

        def capture(self, lab, machine, tag, labels, log):
            world.calls.append(f"capture {machine}")
            if world.fail_step == f"capture {machine}":
                raise KeyboardInterrupt  # the user stops `image build` half-way through this machine
            world.images.append(LabImage.from_labels(tag, labels, 1000))
            return "sha256:" + tag

        def restore(self, lab, machine, log):
            world.restored.append(machine)

        def recover_capture(self, lab, machine, log):
            world.calls.append(f"recover {machine}")

        def destroy(self, lab, log):
            return None  # Vagrant (the fake driver) destroys

        def cleanup(self, lab, log):
            return list(world.leftovers)

        def ssh_configs(self, lab, machines, log):
            return None  # ask "Vagrant" (the fake driver)

        def machines(self, inst, log):
            return []  # no machine Vagrant does not know

        def prepare_network(self, seat, log):
            world.calls.append("network")

        def native_status(self, inst, machines, log=None):
            world.calls.append("native")
            if world.native_wrong:
                return {m: RUNNING for m in machines}
            return {m: world.machines.get(m, NOT_CREATED) for m in machines}

    return Fake()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMDOCK_HOST_DIR", str(tmp_path / "host"))
    monkeypatch.setattr(hostscan, "host_networks", lambda log: [])  # the host's own are another test's
    labs = tmp_path / "labs"
    folder = labs / LAB["name"]
    folder.mkdir(parents=True)
    (folder / "lab.yaml").write_text(yaml.safe_dump(LAB))

    def make(base: type = DockerProvider, lab: dict | None = None):
        if lab is not None:
            (folder / "lab.yaml").write_text(yaml.safe_dump(lab))
        world = World(tmp_path / "home" / "labs" / LAB["name"])
        names = [m["name"] for m in (lab or LAB)["machines"]]
        provider = fake_provider(world, base)
        events = Recorder()
        engine = Engine(
            Settings(provider=provider.name),
            events,
            [labs],
            provider=provider,
            driver_factory=lambda root, log, *, lab, provider, on_line=None: FakeDriver(world, names, root, provider),
            transport_factory=lambda machine, ssh, log, **kw: FakeTransport(world, machine),
        )
        return engine, world, events

    return make


def step_names(world: World) -> list[str]:
    return [name for _, name in world.scripts if name.startswith("step")]


def test_first_up_runs_everything_then_a_second_up_asks_only_the_provider(setup):
    engine, world, _ = setup()
    result = engine.up("ch97-engine")
    assert result.ran == result.skipped + result.ran and result.skipped == 0
    assert step_names(world) == [f"step{i}" for i in range(1, 12)]
    assert world.calls.count("up") == 1
    world.calls.clear()
    world.scripts.clear()
    again = engine.up("ch97-engine")
    assert again.ran == 0 and again.skipped == result.ran
    # the no-op path: the provider's own status, no `vagrant status`, `up` or `ssh-config`
    assert world.calls == ["native"]
    assert world.scripts == []


def test_a_new_apt_mirror_rewrites_the_sources_and_nothing_else(setup):
    """A classroom's mirror differs from the teacher's (or does not answer): the machines keep
    Docker, the base image and every step; only the apt sources are written again."""
    engine, world, _ = setup()
    engine.up("ch97-engine")
    base = labimages.base_fingerprint(engine.settings, "docker", "vmdock/machine:x")
    world.scripts.clear()
    engine.settings = Settings(provider="docker", apt_mirror="http://127.0.0.1:9/debian")
    again = engine.up("ch97-engine")
    assert sorted(name for _, name in world.scripts) == ["apt-mirror", "apt-mirror"]  # one per machine
    assert again.ran == 2
    assert labimages.base_fingerprint(engine.settings, "docker", "vmdock/machine:x") == base


def test_status_shows_the_last_good_step_in_plan_order(setup):
    engine, world, _ = setup()
    engine.up("ch97-engine")
    row = engine.status("ch97-engine")[0]
    assert row["phase"] == "provisioned"
    assert row["last_good_step"] == "db: on db"  # not step9, however the keys sort
    assert row["machines"]["web"]["state"] == RUNNING and row["machines"]["web"]["ssh"] == "vagrant@127.0.0.1:2200"
    world.calls.clear()
    engine.status("ch97-engine", refresh=True)
    assert world.calls == ["status"]


def test_resume_after_a_failed_step(setup):
    engine, world, _ = setup()
    world.fail_step = "step4"
    with pytest.raises(ProvisionError):
        engine.up("ch97-engine")
    state = engine.lab("ch97-engine").state()
    assert state.phase is Phase.FAILED and state.last_error["step"] == "step 4"
    row = engine.status("ch97-engine")[0]
    assert row["last_good_step"] == "web: step 3"
    world.fail_step = None
    world.scripts.clear()
    engine.up("ch97-engine")
    assert step_names(world) == [f"step{i}" for i in range(4, 12)]
    assert engine.lab("ch97-engine").state().phase is Phase.PROVISIONED


def test_halted_machines_boot_again_and_provision_again(setup):
    engine, world, _ = setup()
    engine.up("ch97-engine")
    engine.halt("ch97-engine")
    assert engine.lab("ch97-engine").state().phase is Phase.HALTED
    world.scripts.clear()
    world.calls.clear()
    engine.up("ch97-engine")
    state = engine.lab("ch97-engine").state()
    assert [state.machines[m]["boots"] for m in ("web", "db")] == [1, 1]
    assert world.calls.count("up") == 1
    # same machine, one more boot: its daemons are gone, so every item runs again
    assert step_names(world) == [f"step{i}" for i in range(1, 12)]
    assert state.phase is Phase.PROVISIONED


def test_changed_settings_recreate_containers(setup):
    engine, world, events = setup()
    engine.up("ch97-engine")
    first_ids = dict(world.ids)
    changed = dict(LAB, machines=[{"name": "web", "forwarded_ports": [{"guest": 80, "host": 8097}]}, {"name": "db"}])
    engine, world2, events = setup(lab=changed)
    world2.machines, world2.ids = world.machines, world.ids
    engine.up("ch97-engine")
    assert "destroy" in world2.calls and "reload" not in world2.calls
    assert all(world2.ids[m] == first_ids[m] + 1 for m in first_ids)  # new containers
    assert any("recreating" in e[1] for e in events.events if e[0] == "info")
    assert step_names(world2) == [f"step{i}" for i in range(1, 12)]


def test_changed_settings_reload_vms(setup):
    engine, world, _ = setup(LibvirtProvider)
    engine.up("ch97-engine")
    ids = dict(world.ids)
    changed = dict(LAB, machines=[{"name": "web", "forwarded_ports": [{"guest": 80, "host": 8097}]}, {"name": "db"}])
    engine, world2, _ = setup(LibvirtProvider, lab=changed)
    world2.machines, world2.ids = world.machines, world.ids
    engine.up("ch97-engine")
    assert "reload" in world2.calls and "destroy" not in world2.calls
    assert world2.ids == ids  # the same VMs: nothing to run again
    assert step_names(world2) == []


def test_a_taken_host_port_refuses_up_before_anything_changes(setup):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now
    lab = dict(LAB, machines=[{"name": "web", "forwarded_ports": [{"guest": 80, "host": port}]}, {"name": "db"}])
    engine, world, _ = setup(lab=lab)
    engine.up("ch97-engine")
    assert engine.status("ch97-engine")[0]["ports"][0]["host"] == port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + 7))
        holder.listen()
        world.calls.clear()
        engine.settings = Settings(provider="docker", port_offset=7)
        taken = rf"127\.0\.0\.1:{port + 7} is in use, held by a process on this host"
        with pytest.raises(hostports.PortsTaken, match=taken):
            engine.up("ch97-engine")
    assert world.calls == ["native"]  # no destroy, no up: the machines stay as they were
    row = engine.status("ch97-engine")[0]
    assert row["phase"] == "provisioned" and row["port_offset"] == 0 and "taken" in row["last_error"]["message"]
    engine.up("ch97-engine")  # the port is free again: the offset applies (a container is made anew)
    assert engine.status("ch97-engine")[0]["ports"][0]["host"] == port + 7 and "destroy" in world.calls


def test_vagrant_is_asked_when_the_provider_disagrees_with_the_state(setup):
    engine, world, _ = setup()
    world.native_wrong = True  # says running, but nothing was ever created
    engine.up("ch97-engine")
    assert world.calls[:4] == ["native", "status", "network", "up"]


def test_destroy_forgets_the_machines(setup):
    engine, world, _ = setup()
    engine.up("ch97-engine")
    world.leftovers = ["cleaned"]
    removed = engine.destroy("ch97-engine")
    # the fake provider has no quick way (destroy → None): Vagrant destroys
    assert removed == ["machines (docker)", "cleaned", "network lease 192.168.56.0/28"] and "destroy" in world.calls
    state = engine.lab("ch97-engine").state()
    assert state.phase is Phase.DESTROYED and state.machines == {} and state.plan == []
    assert engine.status() == []  # a destroyed lab leaves `status`
    assert not (world.root / "Vagrantfile").exists() and not (world.root / ".vagrant").exists()


def test_prune_keeps_what_a_lab_uses_and_the_current_machine_image():
    rows = [
        ("sha256:aaa", "vmdock/machine:debian12-old"),
        ("sha256:bbb", "vmdock/machine:debian12-used"),
        ("sha256:ccc", "vmdock/machine:debian12-now"),
        ("sha256:ddd", "<none>:<none>"),
    ]
    users = {"sha256:bbb": {"lab ch2-containers (vmdock-ch2-containers-docker)"}}
    verdicts = dict(prune_verdicts(rows, users, "vmdock/machine:debian12-now"))
    assert verdicts["vmdock/machine:debian12-old"] is None and verdicts["sha256:ddd"] is None
    assert verdicts["vmdock/machine:debian12-used"] == "used by lab ch2-containers (vmdock-ch2-containers-docker)"
    assert "current machine image" in verdicts["vmdock/machine:debian12-now"]
    assert dict(prune_verdicts(rows, users, None))["vmdock/machine:debian12-now"] is None  # --all


def test_render_options_never_build(tmp_path, monkeypatch):
    """`vmdock render` in a new home with an empty cache: a tag, no debootstrap, no docker build."""
    import subprocess

    from vmdock.events import Events

    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail(f"ran {a[0]}"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a[0]}"))
    seen = Recorder()
    values = DockerProvider().render_options(named_lab(), None, seen, build=False)
    assert values["machine_image"].startswith("vmdock/machine:debian12-")  # computed, not built
    assert "--init" in values["create_args"]
    assert isinstance(seen, Events)


def named_lab():
    class _Lab:
        name = "ch97-engine"

    return _Lab()


# -- student mode and lab images ---------------------------------------------------------


def test_student_mode_then_the_remaining_steps(setup):
    engine, world, _ = setup()
    result = engine.up("ch97-engine", no_steps=True)
    assert step_names(world) == [] and result.ran > 0  # machines, Docker, base image, files
    row = engine.status("ch97-engine")[0]
    assert row["phase"] == "provisioned" and row["mode"].startswith("student mode")
    world.scripts.clear()
    engine.up("ch97-engine", upto="3")
    assert step_names(world) == ["step1", "step2", "step3"]
    assert engine.status("ch97-engine")[0]["mode"].startswith("up to step 3 (step 3")
    world.scripts.clear()
    engine.up("ch97-engine", upto="step 5")  # a step's name
    assert step_names(world) == ["step4", "step5"]
    world.scripts.clear()
    engine.up("ch97-engine")
    assert step_names(world) == [f"step{i}" for i in range(6, 12)]
    assert engine.status("ch97-engine")[0]["mode"] == "all steps"
    with pytest.raises(ConfigError, match="--upto 'step 99': no step of that number or name"):
        engine.up("ch97-engine", upto="step 99")
    with pytest.raises(StateError, match="ran step 11 already: they cannot go back to no steps"):
        engine.up("ch97-engine", no_steps=True)


def test_lab_image_build_then_up_and_reset_from_it_run_no_step(setup):
    engine, world, _ = setup()
    made = Classroom(engine).build_image("ch97-engine")  # brings it up, verifies, captures
    assert [i.machine for i in made] == ["web", "db"] and len(world.images) == 2
    assert engine.lab("ch97-engine").state().lab_images == {i.machine: i.tag for i in made}  # reset goes back to them
    assert made[0].tag.startswith("vmdock/lab-ch97-engine-web:") and made[0].tag.endswith("-s11")
    assert len(made[0].steps) == len(engine.lab("ch97-engine").state().plan)
    engine.destroy("ch97-engine")
    world.scripts.clear()
    result = engine.up("ch97-engine")
    assert result.ran == 0 and world.scripts == [] and world.restored == ["web", "db"]
    state = engine.lab("ch97-engine").state()
    assert state.lab_images == {i.machine: i.tag for i in made}
    assert all(state.machines[m]["origin"] for m in ("web", "db"))
    # whatever happened inside, reset makes the machines anew from the same images
    Classroom(engine).reset("ch97-engine")
    assert world.scripts == [] and world.restored == ["web", "db", "web", "db"]
    assert world.calls.count("destroy") == 2
    # --no-image: the full path
    engine.destroy("ch97-engine")
    engine.up("ch97-engine", use_images=False)
    assert step_names(world) == [f"step{i}" for i in range(1, 12)]


def test_a_new_seat_asks_for_the_block_its_lab_image_was_made_on(setup, monkeypatch):
    """The steps in a lab image ran with its machines' addresses: a seat without a block of its
    own (a new home, a student's host) asks for that block first; when another holds it, `up`
    says so and the steps run again with the new addresses."""
    elsewhere = "192.168.56.48/28"  # the teacher's host had the first three blocks taken
    below = [(ipaddress.ip_network(f"192.168.56.{16 * i}/28"), "the teacher's other work") for i in range(3)]
    monkeypatch.setattr(hostscan, "host_networks", lambda log: below)
    engine, world, _ = setup()
    made = Classroom(engine).build_image("ch97-engine")
    home = engine.lab("ch97-engine")
    assert made[0].state["network"] == home.state().network == elsewhere
    engine.destroy("ch97-engine")
    home.state_file.unlink()  # a home that never had this lab, on a host where the first block is free
    monkeypatch.setattr(hostscan, "host_networks", lambda log: [])
    engine, world2, events = setup()
    world2.images = world.images
    engine.up("ch97-engine")
    assert engine.lab("ch97-engine").state().network == elsewhere
    assert step_names(world2) == [] and world2.restored == ["web", "db"]

    engine.destroy("ch97-engine")
    engine.lab("ch97-engine").state_file.unlink()
    taken = ipaddress.ip_network(elsewhere)
    monkeypatch.setattr(hostscan, "host_networks", lambda log: [(taken, "another lab's bridge")])
    engine, world3, events = setup()
    world3.images = world.images
    engine.up("ch97-engine")
    assert engine.lab("ch97-engine").state().network != elsewhere
    assert any(f"made on the network {elsewhere}, which another lab holds" in e[1]
               for e in events.events if e[0] == "info")
    assert step_names(world3) == [f"step{i}" for i in range(1, 12)]  # with the new addresses


def test_an_image_build_stopped_while_capturing_is_put_back_by_the_next_up(setup):
    engine, world, events = setup()
    engine.up("ch97-engine")
    world.fail_step = "capture db"
    with pytest.raises(KeyboardInterrupt):
        Classroom(engine).build_image("ch97-engine")
    state = engine.lab("ch97-engine").state()
    assert state.capturing == ["db"] and state.lab_images == {}
    world.fail_step = None
    world.calls.clear()
    again = engine.up("ch97-engine")
    assert world.calls[0] == "recover db" and again.ran == 0
    assert engine.lab("ch97-engine").state().capturing == []
    assert any("stopped while capturing" in e[1] for e in events.events if e[0] == "info")
    world.calls.clear()
    engine.up("ch97-engine")
    assert not any(c.startswith("recover") for c in world.calls)  # once is enough


def test_a_changed_step_runs_again_on_top_of_the_image(setup):
    engine, world, _ = setup()
    Classroom(engine).build_image("ch97-engine")
    engine.destroy("ch97-engine")
    step10 = {"name": "step 10", "run": "echo changed", "on": ["web"]}
    changed = dict(LAB, steps=[*LAB["steps"][:9], step10, LAB["steps"][10]])
    engine, world2, events = setup(lab=changed)
    world2.images = world.images
    engine.up("ch97-engine")
    assert step_names(world2) == ["step10", "step11"]  # the changed step and those after it
    assert any("lab changed since its image" in e[1] for e in events.events if e[0] == "info")


def test_stale_or_unwanted_images_are_not_used(setup):
    engine, world, _ = setup()
    built = Classroom(engine).build_image("ch97-engine")
    engine.destroy("ch97-engine")
    engine, world, events = setup()
    world.images = list(built)
    engine.up("ch97-engine", no_steps=True)  # a full image has steps: not for student mode
    assert world.restored == [] and step_names(world) == []
    assert any("holds steps this `up` does not ask for" in e[1] for e in events.events if e[0] == "info")
    engine.destroy("ch97-engine")
    stale = [LabImage(**{**i.__dict__, "base": "other"}) for i in world.images]
    engine, world2, events = setup()
    world2.images = stale
    engine.up("ch97-engine")
    assert world2.restored == [] and step_names(world2) == [f"step{i}" for i in range(1, 12)]
    assert any("is stale" in e[1] for e in events.events if e[0] == "info")


def test_image_build_refuses_a_lab_whose_checks_fail(setup):
    engine, world, _ = setup()
    world.fail_checks = True
    with pytest.raises(StateError, match="1 check.s. fail .c.: a lab image is made only of a lab that passes"):
        Classroom(engine).build_image("ch97-engine")
    assert world.images == []


def test_a_student_mode_image_serves_no_steps_and_the_full_lab(setup):
    engine, world, _ = setup()
    made = Classroom(engine).build_image("ch97-engine", no_steps=True)
    assert made[0].tag.endswith("-s0") and step_names(world) == []  # its checks are not run either
    engine.destroy("ch97-engine")
    world.scripts.clear()
    engine.up("ch97-engine", no_steps=True)
    assert world.restored == ["web", "db"] and world.scripts == []
    engine.destroy("ch97-engine")
    engine.up("ch97-engine")  # the full lab: from the same image, then the steps
    assert world.restored == ["web", "db", "web", "db"]
    assert step_names(world) == [f"step{i}" for i in range(1, 12)]
    # both kinds kept side by side: a full image does not replace the student one
    Classroom(engine).build_image("ch97-engine")
    assert sorted(i.tag.rsplit("-", 1)[1] for i in world.images) == ["s0", "s0", "s11", "s11"]


def test_the_newest_build_wins_among_equal_images():
    def image(machine, built_at, steps=("web:apt",)):
        tag = f"vmdock/lab-x-{machine}:{built_at}"
        return LabImage(tag, "x", machine, "docker", "fp", "base", steps, built_at, "1")

    old = [image("web", "2026-01-01"), image("db", "2026-01-01")]
    new = [image("web", "2026-02-01"), image("db", "2026-02-01")]
    half = [image("web", "2026-03-01")]  # a build that did not finish: no db
    for found in (old + new + half, half + new + old):
        choice = labimages.choose(found, ["web", "db"], "base", "fp", ["web:apt", "db:apt"])
        assert {m: i.built_at for m, i in choice.images.items()} == {"web": "2026-02-01", "db": "2026-02-01"}
