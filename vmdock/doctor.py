"""`vmdock doctor`: what this host can do, and why not."""
from __future__ import annotations

import grp
import os
import shutil
import subprocess

from . import paths, providers, settings
from .hostbuild.hostfacts import kvm_probe
from .providers.base import unix_socket_answers
from .providers.docker import docker_daemon
from .providers.virtualbox import kvm_holds_vtx


def _row(name: str, status: str, detail: str) -> dict:
    return {"name": name, "status": status, "detail": detail}


def _kvm() -> dict:
    dev = "/dev/kvm"
    forced = settings.current().libvirt_driver
    note = f"; VMDOCK_LIBVIRT_DRIVER={forced} is set" if forced else ""
    if not os.path.exists(dev):
        return _row("KVM", "warn", f"no /dev/kvm: libvirt VMs run with TCG (software emulation, slow){note}")
    st = os.stat(dev)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    present = f"{dev} present, mode {st.st_mode & 0o777:04o}, group {group}"
    if not os.access(dev, os.R_OK | os.W_OK):
        return _row("KVM", "warn", f"{present}: not readable and writable by this user: add it to group kvm "
                    f"(libvirt VMs fall back to TCG){note}")
    hint = ""
    if st.st_mode & 0o060 == 0:
        hint = f"; with no group access libvirt re-probes qemu on every lookup — `chgrp kvm {dev}; chmod 0660 {dev}` (host-setup.sh --libvirt does)"
    usable, why = kvm_probe()
    if not usable:
        return _row("KVM", "warn", f"{present}: KVM is unusable: {why}; libvirt machines use the qemu driver "
                    f"(TCG, slow){hint}{note}")
    return _row("KVM", "warn" if hint else "ok", f"{present}; usable: {why}{hint}{note}")


def _libvirt() -> list[dict]:
    """libvirtd, virtlogd, the default pool, vmdock's box: what vagrant-libvirt needs."""
    if not shutil.which("libvirtd") and not shutil.which("virsh"):
        return [_row("libvirt", "warn", "not installed (real VMs on Linux: sudo bash scripts/host-setup.sh --libvirt)")]
    rows = []
    fix = "sudo bash scripts/host-setup.sh --libvirt (starts it, with or without systemd)"
    ok, detail = unix_socket_answers("/var/run/libvirt/libvirt-sock")
    rows.append(_row("libvirtd", "ok" if ok else "fail", "answers" if ok else f"not running ({detail}): {fix}"))
    log_ok, log_detail = unix_socket_answers("/var/run/libvirt/virtlogd-sock")
    rows.append(_row("virtlogd", "ok" if log_ok else "warn",
                     "answers" if log_ok else f"not running ({log_detail}): qemu domains will not start; {fix}"))
    if ok and shutil.which("virsh"):
        try:
            out = subprocess.run(["virsh", "-c", "qemu:///system", "pool-info", "default"], capture_output=True, text=True, timeout=30)
            active = out.returncode == 0 and any(l.split(":", 1)[1].strip() == "running" for l in out.stdout.splitlines() if l.startswith("State:"))
            rows.append(_row("libvirt pool default", "ok" if active else "warn",
                             "running" if active else f"missing or inactive (vagrant-libvirt keeps disks there): {fix}"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            rows.append(_row("libvirt pool default", "warn", f"virsh pool-info failed: {exc}"))
    from .hostbuild import boxes

    try:
        e = boxes.entry("debian12")
        own = e.get("vmdock_box")
        if own and boxes.registered(own, "libvirt"):
            rows.append(_row("libvirt box", "ok", f"{own} is registered with Vagrant"))
        else:
            rows.append(_row("libvirt box", "warn", f"{own} not built: `vmdock box build` (offline, ~2 min); "
                             f"else Vagrant Cloud's {e.get('libvirt')} is used"))
    except Exception as exc:  # reported, not raised: doctor explains
        rows.append(_row("libvirt box", "warn", str(exc)))
    return rows


def _virtualbox_vs_kvm() -> list[dict]:
    if not (shutil.which("VBoxManage") or shutil.which("vboxmanage")):
        return []
    if os.path.exists("/dev/kvm") and kvm_holds_vtx():
        return [_row("VirtualBox vs KVM", "fail",
                     "the kvm_intel/kvm_amd module holds VT-x/AMD-V: VirtualBox cannot start VMs while it is loaded "
                     "(stop libvirt VMs, then `sudo modprobe -r kvm_intel kvm_amd`; or use --provider libvirt)")]
    return [_row("VirtualBox vs KVM", "ok", "no KVM module in use: VirtualBox may use VT-x/AMD-V")]


def _free() -> list[dict]:
    rows = []
    try:
        with open("/proc/meminfo") as fh:
            info = {l.split(":")[0]: int(l.split()[1]) for l in fh if ":" in l}
        avail = info.get("MemAvailable", 0) // 1024
        rows.append(_row("free RAM", "ok" if avail >= 2048 else "warn", f"{avail} MiB available (a lab machine takes 1024 MiB)"))
    except OSError:
        pass
    home = paths.vmdock_home()
    probe = home if home.exists() else home.parent if home.parent.exists() else paths.Path("/")
    du = shutil.disk_usage(probe)
    gib = du.free / 2**30
    rows.append(_row("free disk", "ok" if gib >= 10 else "warn", f"{gib:.1f} GiB free at {probe} (vmdock home: {home})"))
    return rows


def run_doctor() -> list[dict]:
    rows = []
    vagrant = shutil.which("vagrant")
    if vagrant:
        try:
            out = subprocess.run([vagrant, "--version"], capture_output=True, text=True, timeout=30,
                                 env=dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1"))
            rows.append(_row("vagrant", "ok", out.stdout.strip() or out.stderr.strip()[:200]))
        except (OSError, subprocess.TimeoutExpired) as exc:
            rows.append(_row("vagrant", "fail", f"vagrant --version failed: {exc}"))
    else:
        rows.append(_row("vagrant", "fail", "not found: apt-get install vagrant"))
    ok, detail = docker_daemon()
    rows.append(_row("dockerd", "ok" if ok else "warn", detail))
    for probe in providers.probe_all():
        rows.append(_row(f"provider {probe.provider}", "ok" if probe.usable else "fail", probe.reason))
    rows.append(_kvm())
    rows += _libvirt()
    rows += _virtualbox_vs_kvm()
    for tool, why in (("debootstrap", "builds base images offline"), ("ssh", "`vmdock ssh`")):
        path = shutil.which(tool)
        rows.append(_row(tool, "ok" if path else "warn", path or f"not found ({why})"))
    rows += _free()
    try:
        _, why = providers.choose(settings.current().provider, "VMDOCK_PROVIDER")
        rows.append(_row("provider chosen", "ok", why))
    except Exception as exc:  # reported, not raised: doctor explains
        rows.append(_row("provider chosen", "fail", str(exc)))
    return rows
