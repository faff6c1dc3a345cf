"""A lab's runtime folder (``LabHome``), what `up` returns, and how `--upto` names a step."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import hostports, paths, seats
from .errors import ConfigError, StateError
from .loader import LoadedLab
from .runlog import Log
from .state import LabState


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
        self.state_file = paths.state_file(self.name)
        self.log = Log(self.home / "vmdock.log")
        #: this lab under this vmdock home: what its names on the host carry
        self.instance = seats.Instance(paths.vmdock_home(), self.name)

    def state(self) -> LabState:
        return LabState.load(self.state_file, self.name)

    @property
    def machine_names(self) -> list[str]:
        return [m.name for m in self.loaded.lab.machines]


def step_number(key: str) -> int:
    """The lab step (1-based) of a plan item's key: provision names them ``step<N>:<machine>``."""
    return int(key.split(":", 1)[0].removeprefix("step"))


def step_limit(loaded: LoadedLab, upto: str | None) -> int | None:
    """``--upto``: a step's number (0: none) or name → how many of the lab's steps run (None: all)."""
    if upto is None:
        return None
    steps = loaded.lab.steps
    if upto.strip().isdigit() and int(upto) <= len(steps):
        return int(upto)
    for i, step in enumerate(steps, 1):
        if upto in (step.name, step.name_en):
            return i
    raise ConfigError(
        f"--upto {upto!r}: no step of that number or name "
        f"(the lab has steps 1–{len(steps)}; `vmdock show {loaded.name}`)"
    )


def mode(state: LabState, loaded: LoadedLab) -> str:
    """Which of the lab's steps `up` was asked for: all, none (student mode), or up to one."""
    if state.steps_upto is None:
        return "all steps"
    if state.steps_upto == 0:
        return "student mode: no steps (`vmdock up` runs them)"
    step = loaded.lab.steps[state.steps_upto - 1]
    return f"up to step {state.steps_upto} ({step.name}; `vmdock up` runs the rest)"


def status_row(home: LabHome, state: LabState, live_states: dict[str, str]) -> dict:
    """`vmdock status`'s row of a lab, the machines' states given (machine → Vagrant state)."""
    machines = {}
    for m in home.machine_names:
        rec = state.machines.get(m, {})
        ssh = rec.get("ssh")
        machines[m] = {
            "state": live_states.get(m, "not_created" if not rec else "unknown"),
            "ssh": f"{ssh['user']}@{ssh['host']}:{ssh['port']}" if ssh else None,
        }
    last = state.last_good_step()
    ports = hostports.effective_ports(home.loaded.lab.machines, state.port_offset, str(home.loaded.file))
    return {
        "lab": home.name,
        "instance": home.instance.id,
        "network": state.network,
        "port_offset": state.port_offset,
        "ports": [{"machine": p.machine, "guest": p.guest, "host": p.host, "host_ip": p.host_ip, "protocol": p.protocol}
                  for p in ports],
        "provider": state.provider,
        "phase": state.phase.value,
        "mode": mode(state, home.loaded),
        "lab_images": state.lab_images,
        "machines": machines,
        "steps_done": len(state.steps),
        "last_good_step": (state.steps[last].get("title") or last) if last else None,
        "last_error": state.last_error,
        "home": str(home.home),
        "log": str(home.log.path),
    }


def ssh_argv(home: LabHome, state: LabState, machine: str | None) -> list[str]:
    """The `ssh` command line into a machine of the lab."""
    from .driver import SshConfig

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


def refuse_fewer_steps(home: LabHome, state: LabState, limit: int | None) -> None:
    """Steps cannot be undone: a lab whose machines ran step N cannot be brought up to fewer."""
    if limit is None or not state.machines:
        return
    done = sorted({step_number(k) for k in state.steps if k in state.plan and k.startswith("step")})
    past = [n for n in done if n > limit]
    if past:
        raise StateError(
            f"the lab's machines ran step {past[-1]} already: they cannot go back to "
            + ("no steps" if limit == 0 else f"step {limit}"),
            lab=home.name,
            hint=f"`vmdock reset {home.name}` (back to the lab image it was made from), "
            f"or `vmdock destroy {home.name}` first",
        )


def loaded_from(state_file: Path) -> LoadedLab | None:
    """The lab a state file was brought up from (its ``lab_folder``), when it still loads."""
    import json

    from .errors import LabError
    from .loader import load_lab

    try:
        folder = json.loads(state_file.read_text(encoding="utf-8")).get("lab_folder")
        return load_lab(Path(folder)) if folder else None
    except (OSError, ValueError, LabError):
        return None
