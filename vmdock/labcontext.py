"""What a lab's work in its machines runs with: the lab's folder there, the variables every
step and check gets, where a step writes its exports, and the ``Context`` of one provisioning
or verify run (lab, state, settings, log, the machines' addresses).
"""
from __future__ import annotations

import posixpath
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .loader import LoadedLab, _display
from .model import Lab
from .runlog import Log
from .settings import Settings
from .state import LabState
from .transport import REMOTE_TMP

REMOTE_LABS = "/opt/vmdock/labs"
state_lock = threading.Lock()  # machines provision side by side; one state file


def remote_lab_dir(lab: str) -> str:
    return posixpath.join(REMOTE_LABS, lab)


def env_key(machine: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", machine.upper())


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
