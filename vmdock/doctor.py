"""`vmdock doctor`: what this host can do, and why not."""
from __future__ import annotations

import os
import shutil
import subprocess

from . import paths, providers


def _row(name: str, status: str, detail: str) -> dict:
    return {"name": name, "status": status, "detail": detail}


def _kvm() -> dict:
    dev = "/dev/kvm"
    if not os.path.exists(dev):
        return _row("KVM", "warn", "no /dev/kvm: libvirt VMs run with TCG (software emulation, slow)")
    if not os.access(dev, os.R_OK | os.W_OK):
        return _row("KVM", "warn", f"{dev} is not readable and writable by this user (add it to group kvm)")
    st = os.stat(dev)
    mode = oct(st.st_mode & 0o777)
    hint = ""
    if st.st_mode & 0o060 == 0:
        hint = f"; {dev} is {mode}: libvirt re-probes qemu on every lookup — `chgrp kvm {dev}; chmod 0660 {dev}`"
    forced = os.environ.get("VMDOCK_LIBVIRT_DRIVER")
    note = f"; VMDOCK_LIBVIRT_DRIVER={forced} is set" if forced else ""
    return _row("KVM", "warn" if hint else "ok", f"{dev} present ({mode}){hint}{note}")


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
    ok, detail = providers.docker_daemon()
    rows.append(_row("dockerd", "ok" if ok else "warn", detail))
    for probe in providers.probe_all():
        rows.append(_row(f"provider {probe.provider}", "ok" if probe.usable else "fail", probe.reason))
    rows.append(_kvm())
    for tool, why in (("debootstrap", "builds base images offline"), ("ssh", "`vmdock ssh`")):
        path = shutil.which(tool)
        rows.append(_row(tool, "ok" if path else "warn", path or f"not found ({why})"))
    rows += _free()
    try:
        chosen, why = providers.choose(os.environ.get("VMDOCK_PROVIDER") or None, "VMDOCK_PROVIDER")
        rows.append(_row("provider chosen", "ok", why))
    except Exception as exc:  # reported, not raised: doctor explains
        rows.append(_row("provider chosen", "fail", str(exc)))
    return rows
