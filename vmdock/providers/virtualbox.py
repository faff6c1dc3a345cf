"""The virtualbox provider: VMs under VirtualBox (rendered and validated here; no VirtualBox on CI)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .base import NOT_CREATED, Probe, Provider, quick_run, refuse_file_mirrors

if TYPE_CHECKING:
    from ..events import Events
    from ..loader import LoadedLab
    from ..runlog import Log
    from ..seats import Instance


def kvm_holds_vtx() -> bool:
    """Whether a loaded kvm_intel/kvm_amd module is in use (VirtualBox then cannot start VMs)."""
    try:
        mods = Path("/proc/modules").read_text()
    except OSError:
        return False
    return any(line.startswith(("kvm_intel ", "kvm_amd ")) and line.split()[2] != "0" for line in mods.splitlines())


def vm_state(showvminfo: str) -> str | None:
    """``VBoxManage showvminfo --machinereadable`` → Vagrant's state (VMState="poweroff" → poweroff)."""
    for line in showvminfo.splitlines():
        key, sep, value = line.partition("=")
        if sep and key == "VMState":
            return value.strip().strip('"')
    return None


def _vboxmanage() -> str | None:
    return shutil.which("VBoxManage") or shutil.which("vboxmanage")


class VirtualBoxProvider(Provider):
    name = "virtualbox"
    on_settings_changed = "reload"
    up_hint = (
        "if Vagrant could not fetch the box (no Vagrant Cloud here?), "
        "point VMDOCK_BOX_URL_<BOX> at a mirror or a .box file"
    )

    def probe(self) -> Probe:
        exe = _vboxmanage()
        if not exe:
            return Probe(self.name, False, "VBoxManage not found (VirtualBox is not installed)")
        if os.path.exists("/dev/kvm") and kvm_holds_vtx():
            return Probe(self.name, False, "KVM holds VT-x: VirtualBox cannot start VMs while kvm modules are loaded")
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Probe(self.name, False, f"VBoxManage --version failed: {exc}")
        if out.returncode != 0:
            return Probe(self.name, False, f"VBoxManage --version: {out.stderr.strip()[:200]}")
        return Probe(self.name, True, f"VirtualBox {out.stdout.strip()}")

    def render_options(
        self, lab: LoadedLab, log: Log, events: Events, *, build: bool = True, lab_images: dict[str, str] | None = None
    ) -> dict:
        refuse_file_mirrors(self.name)
        from ..vmcapture import lab_boxes  # rendered and validated here; capture needs VirtualBox (README)

        return {"lab_boxes": lab_boxes(lab_images or {})}

    def native_status(self, inst: Instance, machines: list[str], log: Log | None = None) -> dict[str, str] | None:
        exe = _vboxmanage()
        if not exe:
            return None
        out = {}
        for m in machines:  # the Vagrantfile names each VM vmdock-<instance>-<lab>-<machine>
            proc = quick_run([exe, "showvminfo", inst.machine_name(m), "--machinereadable"], log)
            if proc is None:
                return None
            state = vm_state(proc.stdout) if proc.returncode == 0 else None
            if proc.returncode != 0 and "VBOX_E_OBJECT_NOT_FOUND" not in proc.stderr:
                return None
            out[m] = state or NOT_CREATED
        return out
