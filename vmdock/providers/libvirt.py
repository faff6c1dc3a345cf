"""The libvirt provider: real VMs under qemu, through vagrant-libvirt.

The domain type (vagrant-libvirt's ``driver`` setting) is ``kvm`` when KVM
really works here, else ``qemu`` (TCG, software emulation): see
``vmdock.hostbuild.hostfacts.kvm_probe``.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import settings
from ..errors import ConfigError
from ..hostbuild.hostfacts import kvm_probe
from .base import NOT_CREATED, Probe, Provider, quick_run, refuse_file_mirrors, unix_socket_answers

if TYPE_CHECKING:
    from ..events import Events
    from ..labimages import LabImage
    from ..loader import LoadedLab
    from ..runlog import Log
    from ..seats import Instance, Machine

DOMAIN_TYPES = ("kvm", "qemu")
LIBVIRT_URI = "qemu:///system"
LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"
#: the environment variable that forces the domain type (named after vagrant-libvirt's setting)
DOMAIN_TYPE_ENV = "VMDOCK_LIBVIRT_DRIVER"
#: `virsh list` state → Vagrant's (vagrant-libvirt reports libvirt's own, spaces dropped)
_VIRSH_STATES = {"shut off": "shutoff", "in shutdown": "shutdown"}


def vagrant_plugin_installed(name: str) -> bool:
    import glob

    patterns = [
        f"/usr/share/rubygems-integration/all/gems/{name}-*",
        f"/usr/lib/ruby/vendor_ruby/{name.replace('-', '/')}*",
        os.path.expanduser(f"~/.vagrant.d/gems/*/gems/{name}-*"),
        f"/opt/vagrant/embedded/gems/gems/{name}-*",
    ]
    home = os.environ.get("VAGRANT_HOME")
    if home:
        patterns.append(os.path.join(home, f"gems/*/gems/{name}-*"))
    return any(glob.glob(p) for p in patterns)


def domain_type(on_info: Callable[[str], None] | None = None, log=None) -> str:
    """The libvirt domain type: ``kvm`` when KVM really works, else ``qemu`` (TCG).

    ``VMDOCK_LIBVIRT_DRIVER`` (kvm or qemu) overrides the probe.  The choice
    and its reason go to ``on_info`` (the engine's events.info).
    """
    forced = settings.current().libvirt_driver  # validated there: kvm or qemu
    if forced:
        chosen, why = forced, f"libvirt domain type {forced}, as {DOMAIN_TYPE_ENV} says"
    else:
        usable, reason = kvm_probe(log)
        if usable:
            chosen, why = "kvm", f"libvirt domain type kvm: {reason}"
        else:
            chosen, why = "qemu", f"libvirt domain type qemu (TCG, software emulation: slow): {reason}"
    if on_info:
        on_info(why)
    return chosen


def domain_name(prefix: str, machine: str) -> str:
    """vagrant-libvirt's name for a machine's domain (default_prefix + machine, cleaned as it does)."""
    return re.sub(r"[^-a-z0-9_.]", "", prefix + machine, flags=re.IGNORECASE)


def domain_states(virsh_list: str) -> dict[str, str]:
    """`virsh list --all` table → domain → Vagrant state."""
    out: dict[str, str] = {}
    for line in virsh_list.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[0] == "Id" or set(line.strip()) <= {"-"}:
            continue
        state = parts[2].strip()
        out[parts[1]] = _VIRSH_STATES.get(state, state.replace(" ", ""))
    return out


class LibvirtProvider(Provider):
    name = "libvirt"
    on_settings_changed = "reload"
    supports_lab_images = True  # a machine's disk as a versioned Vagrant box: vmdock/vmcapture.py
    up_hint = (
        "if Vagrant could not fetch the box (no Vagrant Cloud here?), build one offline with "
        "`vmdock box build` (libvirt) or point VMDOCK_BOX_URL_<BOX> at a mirror or a .box file"
    )

    def probe(self) -> Probe:
        if not shutil.which("vagrant"):
            return Probe(self.name, False, "vagrant not found")
        if not vagrant_plugin_installed("vagrant-libvirt"):
            why = "the vagrant-libvirt plugin is not installed (apt-get install vagrant-libvirt)"
            return Probe(self.name, False, why)
        if not (shutil.which("qemu-system-x86_64") or shutil.which("qemu-kvm")):
            return Probe(self.name, False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
        ok, detail = unix_socket_answers(LIBVIRT_SOCKET)
        if not ok:
            return Probe(self.name, False, f"libvirtd is not running ({detail})")
        return Probe(self.name, True, "libvirtd answers, vagrant-libvirt installed")

    def render_options(
        self, lab: LoadedLab, log: Log, events: Events, *, build: bool = True, lab_images: dict[str, str] | None = None
    ) -> dict:
        refuse_file_mirrors(self.name)
        from ..vmcapture import lab_boxes

        return {"domain_type": domain_type(on_info=events.info, log=log), "lab_boxes": lab_boxes(lab_images or {})}

    def check_options(self, options: dict) -> None:
        if not options.get("domain_type"):
            raise ConfigError("the libvirt provider needs a domain type (kvm or qemu)")

    def native_status(self, inst: Instance, machines: list[str], log: Log | None = None) -> dict[str, str] | None:
        if not shutil.which("virsh"):
            return None
        proc = quick_run(["virsh", "-c", LIBVIRT_URI, "list", "--all"], log)
        if proc is None or proc.returncode != 0:
            return None
        found = domain_states(proc.stdout)
        return {m: found.get(domain_name(inst.prefix, m), NOT_CREATED) for m in machines}

    def machines(self, inst: Instance, log: Log) -> list[Machine] | None:
        """The instance's domains, by name (vmdock-<instance>-<lab>-<machine>)."""
        from ..seats import Machine

        if not shutil.which("virsh"):
            return None
        listed = quick_run(["virsh", "-c", LIBVIRT_URI, "list", "--all", "--uuid", "--name"], log)
        states = quick_run(["virsh", "-c", LIBVIRT_URI, "list", "--all"], log)
        if listed is None or listed.returncode != 0 or states is None:
            return None
        known = domain_states(states.stdout)
        prefix = domain_name(inst.prefix, "")
        out = []
        for line in listed.stdout.splitlines():
            uuid, _, name = line.strip().partition(" ")
            name = name.strip()
            if name.startswith(prefix):
                machine = name[len(prefix):]
                state = known.get(name, "unknown")
                out.append(Machine(self.name, uuid, name, inst.id, inst.lab, str(inst.home), machine, state))
        return out

    def remove(self, machines: list[Machine], log: Log) -> None:
        """Stop and undefine each domain with its disks (vagrant-libvirt's volumes)."""
        from ..runlog import run

        for m in machines:
            run(["virsh", "-c", LIBVIRT_URI, "destroy", m.name], log, check=False)  # already off: fine
            run(["virsh", "-c", LIBVIRT_URI, "undefine", m.name, "--remove-all-storage", "--nvram"], log)

    def lab_images(self, log: Log) -> list[LabImage]:
        from ..vmcapture import lab_images

        return lab_images(self.name)

    def capture(self, inst: Instance, machine: str, tag: str, labels: dict[str, str], log: Log) -> str:
        from ..vmcapture import capture

        return capture(inst, machine, tag, labels, log, tcg=domain_type(log=log) == "qemu")

    def restore(self, inst: Instance, machine: str, log: Log) -> None:
        from ..paths import lab_home
        from ..vmcapture import restore_check

        restore_check(lab_home(inst.lab), inst.lab, machine, log, domain=domain_name(inst.prefix, machine))
