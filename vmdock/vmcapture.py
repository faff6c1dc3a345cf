"""Capture a running libvirt lab machine as its lab image, and check a machine made from one.

A VM's lab image keeps its disk, not its processes: before the capture the
containers that run are recorded and a boot unit (``vmdock-lab-start``) is
installed that starts them again on the first boot of a machine made from the
image; ``restore_check`` reads its outcome.  The disk itself becomes a
versioned Vagrant box (``vmdock.vmimage``); the machine is halted for that and
started again afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import paths, vmimage
from .driver import SshConfig, parse_ssh_config, vagrant_env
from .errors import CommandError, ConfigError, ProviderError, tail
from .hostbuild import boxes
from .providers.libvirt import domain_name
from .runlog import Log, run
from .transport import Transport

if TYPE_CHECKING:
    from .labimages import LabImage
    from .seats import Instance

#: how the disk of a lab image is made (vmimage.METHODS)
METHOD_ENV = "VMDOCK_LIBVIRT_IMAGE_METHOD"

STATE_DIR = "/var/lib/vmdock"
RUNNING = f"{STATE_DIR}/running-containers"
STATUS = f"{STATE_DIR}/lab-start.status"
START_UNIT = "vmdock-lab-start.service"

#: Run as root in the machine before its disk is captured.
GUEST_PREPARE = f"""\
mkdir -p {STATE_DIR}
docker ps -q --no-trunc > {RUNNING}
rm -f {STATUS}
cat > /usr/local/sbin/vmdock-lab-start <<'HOOK'
#!/bin/bash
# vmdock-lab-start: on the first boot of a machine made from a vmdock lab image,
# start the containers that ran when the image was made (the disk keeps them,
# not their processes); then write the outcome for vmdock to read.
status=ok
if [ -s {RUNNING} ]; then
    xargs -r docker start < {RUNNING} >/dev/null || status="starting the lab's containers failed"
fi
mv -f {RUNNING} {RUNNING}.started
echo "$status" > {STATUS}
HOOK
chmod 0755 /usr/local/sbin/vmdock-lab-start
cat > /etc/systemd/system/{START_UNIT} <<'UNIT'
[Unit]
Description=vmdock: start the lab's containers kept in its lab image
After=docker.service
Wants=docker.service
ConditionPathExists={RUNNING}

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmdock-lab-start

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable --quiet {START_UNIT}
sync
"""

#: Waits (in the machine) for the start unit's outcome: its first line is ok or what failed.
GUEST_STATUS = f"""\
for _ in $(seq 1 300); do [ -s {STATUS} ] && break; sleep 1; done
cat {STATUS} 2>/dev/null || echo "the start unit did not run ({START_UNIT})"
systemctl --no-pager status {START_UNIT} 2>&1 | tail -n 5 || true
"""


def restore_problem(status_output: str) -> str | None:
    """What went wrong on a first boot from a lab image (GUEST_STATUS's output), or None."""
    first = status_output.strip().split("\n", 1)[0].strip()
    return None if first == "ok" else first or "no status"



def machine_ssh(lab_home: Path, machine: str, log: Log) -> SshConfig:
    """The machine's SSH settings, from `vagrant ssh-config` (the machine must run)."""
    env = vagrant_env(vmimage.PROVIDER)
    out = run(["vagrant", "ssh-config", machine], log, cwd=lab_home, env=env, timeout=300).stdout
    configs = parse_ssh_config(out)
    if machine not in configs:
        raise CommandError(f"vagrant ssh-config has no entry for {machine}", stderr_tail=tail(out), log=log.path)
    return configs[machine]


def capture_machine(
    lab_home: Path,
    lab: str,
    machine: str,
    info: dict,
    log: Log,
    *,
    domain: str,
    fingerprint: str,
    method: str = vmimage.METHOD_PACKAGE,
    tcg: bool = False,
    on_line: vmimage.LineSink | None = None,
) -> vmimage.BoxImage:
    """Capture a running lab machine as its lab image and register it; the machine
    runs again afterwards (it was halted for the capture: one more boot)."""
    ssh = machine_ssh(lab_home, machine, log)
    guest = Transport(machine, ssh, log, lab=lab)
    try:
        guest.run_script(GUEST_PREPARE, name="lab-image-prepare", timeout=300)
    finally:
        guest.close()
    name = vmimage.box_name(lab, machine)
    box = paths.cache_dir() / "lab-images" / f"{name.replace('/', '-')}.box"
    try:
        vmimage.package_machine(
            lab_home, machine, box, info, log, domain=domain, method=method, tcg=tcg, on_line=on_line
        )
        image = vmimage.register_box(box, name, vmimage.box_version(fingerprint), log, on_line=on_line)
    finally:
        box.unlink(missing_ok=True)  # Vagrant has its own copy now
        start_domain(domain, ssh, lab, machine, log)
    return image


def start_domain(domain: str, ssh: SshConfig, lab: str, machine: str, log: Log, wait: float = 900) -> None:
    """Start a halted domain and wait until its sshd answers (same MAC, same address)."""
    if vmimage.virsh(["domstate", domain], log).stdout.strip() != "running":
        vmimage.virsh(["start", domain], log)
    guest = Transport(machine, ssh, log, lab=lab)
    try:
        guest.connect(wait=wait)
    finally:
        guest.close()


def restore_check(lab_home: Path, lab: str, machine: str, log: Log, *, domain: str) -> None:
    """Raise when the first boot of a machine made from a lab image did not finish well."""
    guest = Transport(machine, machine_ssh(lab_home, machine, log), log, lab=lab)
    try:
        guest.connect(wait=300)
        out = guest.run_script(GUEST_STATUS, name="lab-image-status", timeout=400, check=False)
    finally:
        guest.close()
    problem = restore_problem(out.stdout)
    if problem:
        raise ProviderError(
            f"{domain}: starting from the lab image failed: {problem}",
            lab=lab, machine=machine, stderr_tail=tail(out.stdout + out.stderr), log=log.path,
            hint="`vmdock up --no-image` takes the full path",
        )


# --------------------------------------------------------------------------
# the provider contract's hooks (vmdock.providers.base.Provider), for libvirt


def capture(inst: Instance, machine: str, tag: str, labels: dict[str, str], log: Log, *, tcg: bool) -> str:
    """``Provider.capture``: the lab image ``tag`` of a running machine; returns ``<box> <version>``."""
    from .labimages import LABEL_PREFIX

    info = {"tag": tag, "labels": labels}
    image = capture_machine(
        paths.lab_home(inst.lab), inst.lab, machine, info, log, domain=domain_name(inst.prefix, machine),
        fingerprint=labels[LABEL_PREFIX + "fingerprint"], method=method(), tcg=tcg,
    )
    return f"{image.name} {image.version}"


def method() -> str:
    """How disks are captured: ``VMDOCK_LIBVIRT_IMAGE_METHOD`` (vagrant-package or qemu-img)."""
    chosen = os.environ.get(METHOD_ENV) or vmimage.METHOD_PACKAGE
    if chosen not in vmimage.METHODS:
        raise ConfigError(f"{METHOD_ENV}: {chosen!r} must be one of {', '.join(vmimage.METHODS)}")
    return chosen


def registered_images() -> list[vmimage.BoxImage]:
    """Every lab image box Vagrant has (``info.json`` names its tag and labels)."""
    folders = sorted((boxes.vagrant_home() / "boxes").glob("vmdock-VAGRANTSLASH-*"))
    found = (vmimage.registered_image(f.name.replace("-VAGRANTSLASH-", "/")) for f in folders)
    return [i for i in found if i is not None and i.info.get("tag") and isinstance(i.info.get("labels"), dict)]


def lab_images(provider: str) -> list[LabImage]:
    """``Provider.lab_images``: the lab images of ``provider`` registered with Vagrant."""
    from .labimages import LabImage

    out = []
    for box in registered_images():
        disk = box.directory / "box.img"
        size = disk.stat().st_size if disk.exists() else 0
        image = LabImage.from_labels(str(box.info["tag"]), box.info["labels"], size)
        if image is not None and image.provider == provider:
            out.append(image)
    return out


def lab_boxes(lab_images: dict[str, str]) -> dict[str, dict[str, str]]:
    """Machine → the box and exact version its lab image tag is registered as (for the Vagrantfile)."""
    by_tag = {str(b.info["tag"]): b for b in registered_images()}
    found = {m: by_tag[tag] for m, tag in lab_images.items() if tag in by_tag}
    return {m: {"box": box.name, "version": box.version} for m, box in found.items()}
