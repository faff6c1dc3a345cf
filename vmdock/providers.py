"""Which Vagrant providers can work on this host, and which one to use.

Order of preference: virtualbox, libvirt, docker (the first usable one), unless
``--provider`` or ``VMDOCK_PROVIDER`` says otherwise.  Each probe is cheap (no
`vagrant` call): binaries on PATH, device nodes, daemon sockets.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import settings
from .errors import ProviderError
from .hostbuild import hostfacts

ORDER = ("virtualbox", "libvirt", "docker")


@dataclass(frozen=True)
class Probe:
    provider: str
    usable: bool
    reason: str


def _unix_socket_answers(path: str, request: bytes | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    if not os.path.exists(path):
        return False, f"{path} does not exist"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        if request:
            s.sendall(request)
            data = s.recv(256)
            if not data:
                return False, f"{path} closed the connection"
            return True, data.split(b"\r\n", 1)[0].decode("latin-1")
        return True, "socket answers"
    except OSError as exc:
        return False, f"{path}: {exc.strerror or exc}"
    finally:
        s.close()


def docker_daemon() -> tuple[bool, str]:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True, f"DOCKER_HOST={host} (not probed)"
    ok, detail = _unix_socket_answers(host[len("unix://"):], b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    if ok and " 200 " not in detail + " ":
        return False, f"dockerd answered {detail!r}"
    return ok, "dockerd answers" if ok else detail


def _vagrant_plugin_installed(name: str) -> bool:
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


def probe_virtualbox() -> Probe:
    exe = shutil.which("VBoxManage") or shutil.which("vboxmanage")
    if not exe:
        return Probe("virtualbox", False, "VBoxManage not found (VirtualBox is not installed)")
    if os.path.exists("/dev/kvm") and _kvm_in_use_by_others():
        return Probe("virtualbox", False, "KVM holds VT-x: VirtualBox cannot start VMs while kvm modules are loaded")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe("virtualbox", False, f"VBoxManage --version failed: {exc}")
    if out.returncode != 0:
        return Probe("virtualbox", False, f"VBoxManage --version: {out.stderr.strip()[:200]}")
    return Probe("virtualbox", True, f"VirtualBox {out.stdout.strip()}")


def _kvm_in_use_by_others() -> bool:
    try:
        mods = Path("/proc/modules").read_text()
    except OSError:
        return False
    return any(line.startswith(("kvm_intel ", "kvm_amd ")) and not line.split()[2] == "0" for line in mods.splitlines())


def probe_libvirt() -> Probe:
    if not shutil.which("vagrant"):
        return Probe("libvirt", False, "vagrant not found")
    if not _vagrant_plugin_installed("vagrant-libvirt"):
        return Probe("libvirt", False, "the vagrant-libvirt plugin is not installed (apt-get install vagrant-libvirt)")
    if not (shutil.which("qemu-system-x86_64") or shutil.which("qemu-kvm")):
        return Probe("libvirt", False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    sock = "/var/run/libvirt/libvirt-sock"
    ok, detail = _unix_socket_answers(sock)
    if not ok:
        return Probe("libvirt", False, f"libvirtd is not running ({detail})")
    return Probe("libvirt", True, "libvirtd answers, vagrant-libvirt installed")


def probe_docker() -> Probe:
    if not shutil.which("vagrant"):
        return Probe("docker", False, "vagrant not found (apt-get install vagrant)")
    if not shutil.which("docker"):
        return Probe("docker", False, "docker client not found (apt-get install docker.io)")
    ok, detail = docker_daemon()
    if not ok:
        return Probe("docker", False, f"dockerd is not reachable: {detail}")
    return Probe("docker", True, "dockerd answers; machines are containers running sshd and their own dockerd")


def kvm_probe(log=None, *, refresh: bool = False, timeout: float = hostfacts.KVM_PROBE_TIMEOUT) -> tuple[bool, str]:
    return hostfacts.kvm_probe(log, refresh=refresh, timeout=timeout)


def libvirt_driver(on_info: Callable[[str], None] | None = None, log=None) -> str:
    """vagrant-libvirt's ``driver``: ``kvm`` when KVM really works, else ``qemu`` (TCG).

    ``VMDOCK_LIBVIRT_DRIVER`` (kvm or qemu) overrides the probe.  The choice
    and its reason go to ``on_info`` (the engine's events.info).
    """
    forced = settings.current().libvirt_driver
    if forced:
        driver, why = forced, f"libvirt driver {forced}, as VMDOCK_LIBVIRT_DRIVER says"
    else:
        usable, reason = kvm_probe(log)
        if usable:
            driver, why = "kvm", f"libvirt driver kvm: {reason}"
        else:
            driver, why = "qemu", f"libvirt driver qemu (TCG, software emulation: slow): {reason}"
    if on_info:
        on_info(why)
    return driver


PROBES = {"virtualbox": probe_virtualbox, "libvirt": probe_libvirt, "docker": probe_docker}


def probe_all() -> list[Probe]:
    return [PROBES[p]() for p in ORDER]


def choose(requested: str | None, source: str = "--provider") -> tuple[str, str]:
    """Return (provider, why).  Raises ProviderError when none can work."""
    if requested:
        probe = PROBES[requested]()
        if not probe.usable:
            raise ProviderError(
                f"provider {requested} (from {source}) cannot work here: {probe.reason}",
                hint="`vmdock doctor` shows every provider's state",
            )
        return requested, f"{requested}, as {source} asks ({probe.reason})"
    probes = probe_all()
    for probe in probes:
        if probe.usable:
            skipped = "; ".join(f"{p.provider}: {p.reason}" for p in probes if p.provider != probe.provider and ORDER.index(p.provider) < ORDER.index(probe.provider))
            return probe.provider, f"{probe.provider}, the first usable of {', '.join(ORDER)}" + (f" (skipped {skipped})" if skipped else "")
    raise ProviderError(
        "no usable provider: " + "; ".join(f"{p.provider}: {p.reason}" for p in probes),
        hint="install VirtualBox, or vagrant-libvirt with libvirtd running, or docker.io with dockerd running; `vmdock doctor` explains",
    )
