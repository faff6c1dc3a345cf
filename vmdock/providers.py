"""Which Vagrant providers can work on this host, and which one to use.

Order of preference: virtualbox, libvirt, docker (the first usable one), unless
``--provider`` or ``VMDOCK_PROVIDER`` says otherwise.  Each probe is cheap (no
`vagrant` call): binaries on PATH, device nodes, daemon sockets.
"""
from __future__ import annotations

import datetime as _dt
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ConfigError, ProviderError

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


# --------------------------------------------------------------------------
# KVM: present is not usable.  On some hosts (nested virtualisation, e.g. a
# Firecracker VM) /dev/kvm opens and answers its ioctls, yet a real guest under
# KVM crawls or hangs: a Debian box stopped at "GRUB loading" for minutes, while
# TCG (emulation) booted it to a login prompt in under 100 s.  So the probe
# boots a real guest the way a VM boots, once with KVM and once with TCG, and
# compares.

#: A 512-byte boot sector (i386, GNU as; `ld -Ttext 0x7c00 --oformat binary`):
#: after SeaBIOS loads it from an IDE disk it switches to 32-bit protected
#: mode (lgdt, CR0.PE, far jump), writes and reads back a word above 1 MiB and
#: writes 1 to qemu's isa-debug-exit port 0xf4: qemu exits with status 3
#: (2 → status 5 when the memory check fails).
#:
#:   cli; xor ax,ax; mov ds,ax; mov ss,ax; mov sp,0x7c00; lgdtl gdtdesc
#:   mov eax,cr0; or eax,1; mov cr0,eax; ljmpl 0x08,pm32
#:   pm32: mov ax,0x10; mov ds,ax; mov ss,ax; mov esp,0x7000
#:   mov dword [0x100000],0x12345678; cmp ...; jne bad; mov al,1; out 0xf4,al
#:   bad: mov al,2; out 0xf4,al; hlt
#:   gdt: null, code 0x00cf9a000000ffff, data 0x00cf92000000ffff
_KVM_PROBE_BOOT_SECTOR = bytes.fromhex(
    "fa31c08ed88ed0bc007c660f0116687c0f20c06683c8010f22c066ea227c0000080066b810008ed88ed0bc007000"
    "00b878563412a300001000813d00001000785634127504b001e6f4b002e6f4f466900000000000000000ffff0000"
    "009acf00ffff00000092cf001700507c0000"
)
KVM_PROBE_TIMEOUT = 20.0
KVM_FACTS_KEY = "kvm"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64") or shutil.which("qemu-kvm")


def _boot_guest(qemu: str, accel: str, disk: str, timeout: float) -> tuple[bool, float, str]:
    """Boot the probe sector under ``accel``: (booted, seconds, detail).

    The process is killed at ``timeout`` and not waited for long afterwards: a
    process stuck in the kernel in a KVM ioctl may not die at once.
    """
    cmd = [
        qemu, "-accel", accel, "-machine", "pc", "-nodefaults", "-display", "none",
        "-monitor", "none", "-serial", "none", "-m", "16", "-no-reboot",
        "-drive", f"file={disk},format=raw,if=ide,snapshot=on",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return False, 0.0, f"{qemu}: {exc}"
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return False, time.monotonic() - start, f"no boot within {timeout:.0f}s (hangs)"
    seconds = time.monotonic() - start
    if proc.returncode == 3:
        return True, seconds, f"booted in {seconds:.1f}s"
    lines = [l for l in (err or "").splitlines() if l.strip() and "warning:" not in l]
    return False, seconds, f"exit {proc.returncode}: {lines[-1].strip()[:200] if lines else 'no message'}"


def kvm_probe(log=None, *, refresh: bool = False, timeout: float = KVM_PROBE_TIMEOUT) -> tuple[bool, str]:
    """Whether qemu can really run a guest with KVM here: (usable, why).

    Boots a tiny guest (SeaBIOS → boot sector → protected mode) with KVM and
    with TCG.  KVM is usable when the guest boots and is not slower than
    emulation (a sick nested KVM is: 7 s against 0.6 s here).  The answer is
    kept in ``cache_dir()/host-facts.json`` until the host reboots (its
    boot_id changes); ``refresh`` or deleting that file asks again.  ``log``
    (a runlog.Log) gets the probe's commands and durations.
    """
    from . import images, paths  # images pulls in more than the provider probes need

    dev = "/dev/kvm"
    if not os.path.exists(dev):
        return False, "no /dev/kvm (no hardware virtualisation, or the kvm module is not loaded)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"{dev} is not readable and writable by this user (group kvm?)"
    qemu = _qemu_binary()
    if not qemu:
        return False, "qemu-system-x86_64 not found, KVM not probed (apt-get install qemu-system-x86)"
    facts_file = paths.cache_dir() / images.HOST_FACTS_FILE
    boot_id = _boot_id()
    known = images._read_json(facts_file).get(KVM_FACTS_KEY)
    if not refresh and isinstance(known, dict) and known.get("boot_id") == boot_id and known.get("qemu") == qemu and "usable" in known:
        return bool(known["usable"]), str(known.get("why", ""))
    with tempfile.TemporaryDirectory(prefix="vmdock-kvm-probe-") as tmp:
        disk = os.path.join(tmp, "boot.img")
        sector = bytearray(512)
        sector[: len(_KVM_PROBE_BOOT_SECTOR)] = _KVM_PROBE_BOOT_SECTOR
        sector[510:512] = b"\x55\xaa"
        Path(disk).write_bytes(bytes(sector))
        kvm_ok, kvm_s, kvm_detail = _boot_guest(qemu, "kvm", disk, timeout)
        tcg_ok, tcg_s, tcg_detail = _boot_guest(qemu, "tcg", disk, timeout)
    if log is not None:
        log.command("host", f"{qemu} -accel kvm … (KVM probe: {kvm_detail})", kvm_s, 0 if kvm_ok else 1)
        log.command("host", f"{qemu} -accel tcg … (KVM probe: {tcg_detail})", tcg_s, 0 if tcg_ok else 1)
    if not kvm_ok:
        usable, why = False, f"a test guest does not boot under KVM: {kvm_detail}"
    elif tcg_ok and kvm_s > 2.0 + 2 * tcg_s:
        usable, why = False, (
            f"KVM is slower than emulation here: a test guest booted in {kvm_s:.1f}s with KVM, "
            f"{tcg_s:.1f}s with TCG (nested virtualisation?); real guests hang at the boot loader"
        )
    else:
        usable, why = True, f"a test guest boots under KVM in {kvm_s:.1f}s (TCG: {tcg_detail})"
    try:
        facts_file.parent.mkdir(parents=True, exist_ok=True)
        from .runlog import Log

        with images._file_lock(paths.cache_dir() / f"{images.HOST_FACTS_FILE}.lock", "host facts", log or Log(os.devnull), wait=60):
            facts = images._read_json(facts_file)
            facts[KVM_FACTS_KEY] = {
                "usable": usable,
                "why": why,
                "boot_id": boot_id,
                "qemu": qemu,
                "kvm_seconds": round(kvm_s, 2),
                "tcg_seconds": round(tcg_s, 2),
                "checked_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            images._write_json_atomic(facts_file, facts)
    except OSError:
        pass  # not remembered: asked again next time
    return usable, why


LIBVIRT_DRIVERS = ("kvm", "qemu")


def libvirt_driver(on_info: Callable[[str], None] | None = None, log=None) -> str:
    """vagrant-libvirt's ``driver``: ``kvm`` when KVM really works, else ``qemu`` (TCG).

    ``VMDOCK_LIBVIRT_DRIVER`` (kvm or qemu) overrides the probe.  The choice
    and its reason go to ``on_info`` (the engine's events.info).
    """
    forced = os.environ.get("VMDOCK_LIBVIRT_DRIVER")
    if forced:
        if forced not in LIBVIRT_DRIVERS:
            raise ConfigError(f"VMDOCK_LIBVIRT_DRIVER: {forced!r} must be kvm or qemu")
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
