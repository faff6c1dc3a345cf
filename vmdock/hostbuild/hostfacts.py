"""What vmdock learnt about this host, kept in ``cache_dir()/host-facts.json``.

Each fact is a JSON object under its own key (``kvm``, ``privileged``);
deleting the file asks every question again.  The KVM probe lives here: it
is the costliest question.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import paths
from ..runlog import Log
from . import fsutil

HOST_FACTS_FILE = "host-facts.json"
KVM_FACTS_KEY = "kvm"
KVM_PROBE_TIMEOUT = 20.0


def facts_file() -> Path:
    return paths.cache_dir() / HOST_FACTS_FILE


def read_fact(key: str) -> dict[str, Any]:
    """The fact ``key`` (``{}`` when unknown)."""
    value = fsutil.read_json(facts_file()).get(key)
    return value if isinstance(value, dict) else {}


def write_fact(key: str, value: dict[str, Any], log: Log | None = None) -> None:
    """Remember ``value`` as fact ``key`` (the other facts stay)."""
    path = facts_file()
    lock = path.with_name(path.name + ".lock")
    with fsutil.file_lock(lock, "host facts", log or Log(Path(os.devnull)), wait=60):
        facts = fsutil.read_json(path)
        facts[key] = value
        fsutil.write_json_atomic(path, facts)


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
    lines = [line for line in (err or "").splitlines() if line.strip() and "warning:" not in line]
    return False, seconds, f"exit {proc.returncode}: {lines[-1].strip()[:200] if lines else 'no message'}"


def _kvm_unavailable(qemu: str | None) -> str | None:
    """Why KVM cannot even be tried here (None: it can)."""
    dev = "/dev/kvm"
    if not os.path.exists(dev):
        return "no /dev/kvm (no hardware virtualisation, or the kvm module is not loaded)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return f"{dev} is not readable and writable by this user (group kvm?)"
    if not qemu:
        return "qemu-system-x86_64 not found, KVM not probed (apt-get install qemu-system-x86)"
    return None


def _boot_both(qemu: str, timeout: float, log: Log | None) -> tuple[tuple[bool, float, str], tuple[bool, float, str]]:
    """Boot the probe sector with KVM, then with TCG."""
    with tempfile.TemporaryDirectory(prefix="vmdock-kvm-probe-") as tmp:
        disk = os.path.join(tmp, "boot.img")
        sector = bytearray(512)
        sector[: len(_KVM_PROBE_BOOT_SECTOR)] = _KVM_PROBE_BOOT_SECTOR
        sector[510:512] = b"\x55\xaa"
        Path(disk).write_bytes(bytes(sector))
        kvm = _boot_guest(qemu, "kvm", disk, timeout)
        tcg = _boot_guest(qemu, "tcg", disk, timeout)
    if log is not None:
        for accel, (ok, seconds, detail) in (("kvm", kvm), ("tcg", tcg)):
            log.command("host", f"{qemu} -accel {accel} … (KVM probe: {detail})", seconds, 0 if ok else 1)
    return kvm, tcg


def _verdict(kvm: tuple[bool, float, str], tcg: tuple[bool, float, str]) -> tuple[bool, str]:
    kvm_ok, kvm_s, kvm_detail = kvm
    tcg_ok, tcg_s, tcg_detail = tcg
    if not kvm_ok:
        return False, f"a test guest does not boot under KVM: {kvm_detail}"
    if tcg_ok and kvm_s > 2.0 + 2 * tcg_s:
        return False, (
            f"KVM is slower than emulation here: a test guest booted in {kvm_s:.1f}s with KVM, "
            f"{tcg_s:.1f}s with TCG (nested virtualisation?); real guests hang at the boot loader"
        )
    return True, f"a test guest boots under KVM in {kvm_s:.1f}s (TCG: {tcg_detail})"


def kvm_probe(log: Log | None = None, *, refresh: bool = False, timeout: float = KVM_PROBE_TIMEOUT) -> tuple[bool, str]:
    """Whether qemu can really run a guest with KVM here: (usable, why).

    Boots a tiny guest (SeaBIOS → boot sector → protected mode) with KVM and
    with TCG.  KVM is usable when the guest boots and is not slower than
    emulation (a sick nested KVM is: 7 s against 0.6 s here).  The answer is
    kept in ``host-facts.json`` until the host reboots (its boot_id changes);
    ``refresh`` or deleting that file asks again.  ``log`` gets the probe's
    commands and durations.
    """
    qemu = _qemu_binary()
    missing = _kvm_unavailable(qemu)
    if missing or not qemu:
        return False, missing or ""
    boot_id = _boot_id()
    known = read_fact(KVM_FACTS_KEY)
    if not refresh and known.get("boot_id") == boot_id and known.get("qemu") == qemu and "usable" in known:
        return bool(known["usable"]), str(known.get("why", ""))
    kvm, tcg = _boot_both(qemu, timeout, log)
    usable, why = _verdict(kvm, tcg)
    fact = {
        "usable": usable, "why": why, "boot_id": boot_id, "qemu": qemu,
        "kvm_seconds": round(kvm[1], 2), "tcg_seconds": round(tcg[1], 2),
        "checked_at": fsutil.utc_now(),
    }
    try:
        write_fact(KVM_FACTS_KEY, fact, log)
    except OSError:
        pass  # not remembered: asked again next time
    return usable, why
