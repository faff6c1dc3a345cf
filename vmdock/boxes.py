"""Base boxes: the catalog (``boxes/boxes.yaml``) and boxes vmdock builds itself.

* ``catalog``: box name (``debian12``) → its entry: a title, the Debian
  suite, the Vagrant Cloud box per provider, and ``vmdock_box``: the name
  under which a box built by vmdock is registered with Vagrant
  (``vmdock/debian12``).
* ``build_box``: a libvirt box built offline from the Debian mirror, with
  nothing but Debian's packages: debootstrap (kernel, GRUB, sshd, sudo,
  ifupdown) straight into a partition of a sparse raw disk, the ``vagrant``
  user with Vagrant's insecure key and passwordless sudo, GRUB with
  ``net.ifnames=0`` and a serial console, ``qemu-img convert`` to qcow2, a
  ``.box`` (tar of metadata.json, Vagrantfile, box.img) cached under
  ``cache_dir()/boxes/``, and ``vagrant box add --force``.
* ``vagrant_box``: the box a Vagrantfile names for a provider: the vmdock
  box when it is registered with Vagrant (seen in Vagrant's box folder, no
  ``vagrant`` call), else the catalog's Vagrant Cloud name.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable

import yaml

from . import images, paths
from .errors import CommandError, ConfigError, ProviderError
from .runlog import Log, run

LineSink = Callable[[str], None]

BUILDABLE = ("libvirt", "docker")
#: What debootstrap puts in the box on top of minbase: an init, a kernel for
#: virtual machines (virtio built for KVM/TCG), a boot loader, SSH, sudo, and
#: the classic ifupdown + dhclient that Vagrant's Debian guest plugin
#: configures private networks with.
BOX_PACKAGES = (
    "systemd-sysv", "udev", "kmod", "iproute2", "ifupdown", "isc-dhcp-client", "netbase",
    "openssh-server", "sudo", "ca-certificates", "procps", "linux-image-cloud-amd64", "grub-pc",
)
#: The guest disk as the VM sees it: sparse, so its size costs nothing until used.
DISK_GB = 20
KERNEL_CMDLINE = "net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200n8"
_BUILD_TIMEOUT = 3600


# --------------------------------------------------------------------------
# the catalog


@lru_cache(maxsize=1)
def catalog() -> dict:
    with open(paths.BOXES_DIR / "boxes.yaml", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{paths.BOXES_DIR / 'boxes.yaml'}: expected a mapping of box names")
    return data


def entry(box: str) -> dict:
    found = catalog().get(box)
    if not isinstance(found, dict):
        raise ConfigError(f"unknown box {box!r} (boxes: {', '.join(catalog())})")
    return found


def url_override(box: str) -> str | None:
    """``VMDOCK_BOX_URL_<BOX>``: a mirror URL or a local .box file for ``box``."""
    return os.environ.get("VMDOCK_BOX_URL_" + re.sub(r"[^A-Z0-9]", "_", box.upper())) or None


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d").expanduser()


def registered(name: str, provider: str) -> bool:
    """Whether Vagrant has box ``name`` for ``provider``, read from its box folder.

    Vagrant keeps ``boxes/<name with / as -VAGRANTSLASH->/<version>/<provider>/``
    (Vagrant 2.4 adds an architecture level).  No ``vagrant`` call: this runs
    on every render.
    """
    folder = vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    pattern = glob.escape(str(folder))
    return any(
        glob.glob(f"{pattern}/*/{provider}/metadata.json") + glob.glob(f"{pattern}/*/*/{provider}/metadata.json")
    )


def own_box(e: dict, provider: str) -> str | None:
    """The vmdock-built box of catalog entry ``e`` when Vagrant has it for ``provider``."""
    own = e.get("vmdock_box")
    if own and provider == "libvirt" and registered(own, provider):
        return own
    return None


def vagrant_box(box: str, provider: str) -> str | None:
    """The Vagrant box name for ``box`` on ``provider`` (None: the catalog has none).

    ``VMDOCK_BOX_URL_<BOX>`` set: the catalog's name (Vagrant fetches it from
    that URL).  Else a box built by ``vmdock box build`` and registered with
    Vagrant wins over the catalog's Vagrant Cloud name.
    """
    e = entry(box)
    return (None if url_override(box) else own_box(e, provider)) or e.get(provider) or None


# --------------------------------------------------------------------------
# the cached .box


def box_file(box: str = "debian12", provider: str = "libvirt", arch: str | None = None) -> Path:
    return paths.cache_dir() / "boxes" / f"{box}-{provider}-{arch or images.debian_arch()}.box"


def _meta_file(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def box_meta(path: Path) -> dict:
    try:
        data = json.loads(_meta_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_boxes() -> list[dict]:
    """Every catalog box × provider: what render would use, and vmdock's own build."""
    rows = []
    for name, e in catalog().items():
        if not isinstance(e, dict):
            continue
        for provider in ("virtualbox", "libvirt", "docker"):
            if provider not in e and not (provider == "libvirt" and e.get("vmdock_box")):
                continue
            row = {
                "box": name,
                "title": e.get("title", ""),
                "provider": provider,
                "catalog": e.get(provider),
                "vmdock_box": e.get("vmdock_box") if provider == "libvirt" else None,
                "registered": False,
                "cached": None,
                "uses": None,
                "url_override": url_override(name),
            }
            if provider == "docker":
                row["uses"] = "vmdock machine image (built on first `vmdock up`)"
            else:
                own = row["vmdock_box"]
                row["registered"] = bool(own) and registered(own, provider)
                row["uses"] = vagrant_box(name, provider)
                f = box_file(name, provider)
                if own and f.is_file():
                    meta = box_meta(f)
                    row["cached"] = {"file": str(f), "size": f.stat().st_size, "built_at": meta.get("built_at")}
            rows.append(row)
    return rows


# --------------------------------------------------------------------------
# building


def build(
    log: Log,
    *,
    provider: str = "libvirt",
    box: str = "debian12",
    mirror: str | None = None,
    force: bool = False,
    on_line: LineSink | None = None,
    on_info: Callable[[str], None] | None = None,
) -> str:
    """`vmdock box build`: the libvirt box (registered with Vagrant), or the docker machine image.

    Returns what was made: the Vagrant box name, or the image tag.
    """
    if provider == "docker":
        entry(box)
        if box != "debian12":
            raise ConfigError(f"the docker provider's machine image is Debian 12 only, not {box!r}")
        return images.ensure_machine_image(log, mirror=mirror, on_line=on_line)
    if provider != "libvirt":
        raise ConfigError(
            f"vmdock builds boxes for {', '.join(BUILDABLE)}, not {provider!r}",
            hint="VirtualBox boxes come from Vagrant Cloud or VMDOCK_BOX_URL_<BOX> (a mirror or a local .box)",
        )
    return build_box(log, provider=provider, box=box, mirror=mirror, force=force, on_line=on_line, on_info=on_info)


def build_box(
    log: Log,
    *,
    provider: str = "libvirt",
    box: str = "debian12",
    mirror: str | None = None,
    force: bool = False,
    on_line: LineSink | None = None,
    on_info: Callable[[str], None] | None = None,
) -> str:
    """Build (or reuse the cached) libvirt ``.box`` and register it with Vagrant.

    Returns the Vagrant box name (``vmdock/debian12``).  The ``.box`` is
    cached as ``cache_dir()/boxes/<box>-libvirt-<arch>.box``; with a cached
    file this only registers it (when Vagrant does not have it yet).
    ``force`` builds anew and re-registers.  The rootfs tarball of the labs'
    base image (``images.rootfs_tarball``) is made too, so that VMs get it
    uploaded instead of building it under emulation.
    """
    info = on_info or (lambda _m: None)
    if provider != "libvirt":
        raise ConfigError(f"vmdock builds Vagrant boxes for libvirt only, not {provider!r}")
    e = entry(box)
    name = e.get("vmdock_box")
    suite = e.get("suite")
    if not name or not suite:
        raise ConfigError(
            f"box {box!r} cannot be built by vmdock (boxes.yaml gives it no vmdock_box and suite)",
            hint="boxes vmdock builds: " + ", ".join(b for b, v in catalog().items() if isinstance(v, dict) and v.get("vmdock_box")),
        )
    arch = images.debian_arch()
    if arch != "amd64":
        raise ProviderError(f"vmdock builds libvirt boxes for amd64 hosts only (this host: {arch})")
    target = box_file(box, provider, arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    with images._file_lock(target.parent / f"{target.stem}.lock", f"the {box} {provider} box", log):
        if target.is_file() and not force:
            info(f"box {name}: cached {target}")
            log.event(f"box {box}/{provider}: cached {target}")
        else:
            started = time.monotonic()
            _build_box_file(log, target, name=name, suite=suite, mirror=images.apt_mirror(mirror), on_line=on_line, info=info)
            info(f"box {name}: built {target} ({target.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.0f}s")
        if force or not registered(name, provider):
            info(f"box {name}: vagrant box add")
            _vagrant(["box", "add", "--force", "--name", name, "--provider", provider, str(target)], log, on_line=on_line)
            _drop_stale_pool_volumes(log, name)
        else:
            info(f"box {name}: registered with Vagrant already")
    # The labs' base image (debian:bookworm in every machine) is this rootfs,
    # uploaded at provisioning; without it each VM would debootstrap it itself,
    # which takes many minutes under emulation.
    tarball = images.rootfs_tarball(log, mirror=mirror, suite=suite, on_line=on_line)
    info(f"lab base image rootfs: {tarball}")
    return name


def _vagrant(args: list[str], log: Log, **kw):
    from .driver import vagrant_env

    try:
        return run(["vagrant", *args], log, env=vagrant_env(), timeout=1800, **kw)
    except CommandError as exc:
        if exc.exit_code is None and "not installed" in exc.message:
            raise ProviderError("vagrant is not installed", hint="sudo bash scripts/host-setup.sh --libvirt", log=log.path) from exc
        raise


def _drop_stale_pool_volumes(log: Log, name: str) -> None:
    """Old copies of this box in libvirt's default pool that no disk is based on.

    vagrant-libvirt uploads a box into the pool once, named after the box and
    the box file's mtime; a rebuilt box gets a new volume and the old one would
    stay forever.  Volumes still backing a machine's disk are kept.
    """
    if not shutil.which("virsh"):
        return
    virsh = ["virsh", "-c", "qemu:///system"]
    listed = run([*virsh, "vol-list", "default"], log, check=False, timeout=60)
    if listed.returncode != 0:
        return
    vols = [l.split()[0] for l in listed.stdout.splitlines()[2:] if l.strip()]
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    box_vols = [v for v in vols if v.startswith(prefix)]
    if not box_vols:
        return
    backing = set()
    for v in vols:
        if v in box_vols:
            continue
        xml = run([*virsh, "vol-dumpxml", "--pool", "default", v], log, check=False, timeout=60).stdout
        backing.update(re.findall(r"<backingStore>\s*<path>([^<]+)</path>", xml))
    for v in box_vols:
        path = run([*virsh, "vol-path", "--pool", "default", v], log, check=False, timeout=60).stdout.strip()
        if path and path not in backing:
            run([*virsh, "vol-delete", "--pool", "default", v], log, check=False, timeout=120)


# Inside the new system (chroot): the vagrant user, SSH, networking, GRUB's
# settings, no apt timers racing the provisioning, a machine-id and SSH host
# keys made anew on each VM's first boot.  $1: the insecure public key file,
# $2: the root filesystem's UUID, $3: the kernel command line, $4 hostname.
_CONFIGURE = r"""
set -eu
key=$1 uuid=$2 cmdline=$3 name=$4
echo "$name" > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" > /etc/hosts
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$uuid" > /etc/fstab
cat > /etc/network/interfaces <<'EOF'
# The management NIC (eth0: net.ifnames=0 on the kernel line) takes DHCP from
# libvirt; Vagrant appends the private network's stanza for eth1.
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
EOF
id vagrant >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group vagrant
echo vagrant:vagrant | chpasswd
passwd --lock root >/dev/null
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant "$key" /home/vagrant/.ssh/authorized_keys
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > /etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
printf 'UseDNS no\nGSSAPIAuthentication no\n' > /etc/ssh/sshd_config.d/vmdock.conf
# Host keys: made on each VM's first boot, not shared by every VM of the box.
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/vmdock-ssh-hostkeys.service <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot (vmdock box)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
systemctl enable vmdock-ssh-hostkeys.service ssh.service >/dev/null 2>&1
# apt's daily timers would take the dpkg lock while vmdock installs Docker.
systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
cat > /etc/default/grub <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="$cmdline"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log /var/log/apt/* /tmp/* /var/tmp/*
mkdir -p /var/lib/apt/lists/partial
"""

_GRUB_CFG = """\
# Written by vmdock's box build; `update-grub` in the VM writes it anew from /etc/default/grub.
set timeout=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root {uuid}
menuentry 'Debian GNU/Linux (vmdock box)' {{
    linux /vmlinuz root=UUID={uuid} ro {cmdline} quiet
    initrd /initrd.img
}}
"""

_BOX_VAGRANTFILE = """\
# Defaults of the vmdock/debian12 box (vmdock builds it: `vmdock box build`).
Vagrant.configure("2") do |config|
  # Vagrant's insecure key is in the box; no rsync/NFS folder by default.
  config.ssh.insert_key = false
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
    lv.graphics_type = "none"
  end
end
"""


def _sources(mirror: str, suite: str) -> str:
    security = os.environ.get("VMDOCK_APT_SECURITY_MIRROR") or (
        "http://deb.debian.org/debian-security" if mirror == images.DEFAULT_MIRROR else ""
    )
    text = (
        "# Written by vmdock's box build.\n"
        f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    if security:
        text += (
            f"\nTypes: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
    return text


def _build_box_file(log: Log, target: Path, *, name: str, suite: str, mirror: str, on_line, info) -> None:
    root = images._root_prefix()
    for tool in ("debootstrap", "sfdisk", "losetup", "partx", "mkfs.ext4", "qemu-img", "chroot", "fstrim"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists():
            raise ProviderError(
                f"{tool} is not installed (the box build needs it)",
                hint="sudo bash scripts/host-setup.sh --libvirt",
                log=log.path,
            )
    key = paths.TEMPLATES_DIR / "machine" / "vagrant-insecure.pub"
    if not key.is_file():
        raise ProviderError(f"{key} is missing", hint="reinstall vmdock (templates/machine/ belongs to it)")
    cache = target.parent
    for stale in cache.glob(f".{target.stem}.*"):
        if stale.is_dir():
            log.event(f"removing the stale box build folder {stale}")
            _cleanup(stale, None, log, root)
    work = cache / f".{target.stem}.{os.getpid()}"
    work.mkdir(parents=True)
    raw, mnt = work / "disk.raw", work / "mnt"
    mnt.mkdir()
    loop = None
    started = time.monotonic()
    try:
        # A sparse raw disk, one bootable Linux partition from 1 MiB (GRUB's
        # core.img goes into the gap before it).
        with open(raw, "wb") as fh:
            fh.truncate(DISK_GB << 30)
        run(["sfdisk", "--quiet", str(raw)], log, input="label: dos\nstart=2048, type=83, bootable\n", timeout=60)
        loop = run([*root, "losetup", "--find", "--show", "--partscan", str(raw)], log, timeout=60).stdout.strip()
        part = _partition_node(loop, log, root)
        fs_uuid = str(uuid.uuid4())
        run([*root, "mkfs.ext4", "-q", "-F", "-L", "vmdock-root", "-U", fs_uuid, part], log, timeout=300)
        run([*root, "mount", part, str(mnt)], log, timeout=60)

        info(f"box {name}: debootstrap {suite} from {mirror}")
        t0 = time.monotonic()
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        try:
            run(
                [*root, "debootstrap", "--variant=minbase", "--arch=amd64", f"--keyring={keyring}",
                 "--include=" + ",".join(BOX_PACKAGES), suite, str(mnt), mirror],
                log, timeout=_BUILD_TIMEOUT, on_line=on_line,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            )
        except CommandError as exc:
            with contextlib.suppress(OSError):
                lines = (mnt / "debootstrap" / "debootstrap.log").read_text(errors="replace").splitlines()
                log.write("--- last lines of debootstrap.log:\n" + "\n".join("    " + l for l in lines[-60:]))
            raise exc.with_context(
                step="box",
                hint=f"debootstrap could not build Debian {suite} from {mirror}: is the mirror reachable "
                f"(set ${images.MIRROR_ENV})? The log has the end of debootstrap.log",
            )
        debootstrap_s = time.monotonic() - t0

        info(f"box {name}: vagrant user, SSH, GRUB")
        put = lambda rel, text: run([*root, "tee", str(mnt / rel)], log, input=text, timeout=60)  # noqa: E731
        put("tmp/vagrant-insecure.pub", key.read_text(encoding="utf-8"))
        put("etc/apt/sources.list", "")
        put("etc/apt/sources.list.d/debian.sources", _sources(mirror, suite))
        for fs, opts in (("/dev", ["--bind"]), ("/proc", ["-t", "proc"]), ("/sys", ["-t", "sysfs"])):
            src = fs if fs == "/dev" else fs.strip("/")
            run([*root, "mount", *opts, src, str(mnt / fs.strip("/"))], log, timeout=60)
        run(
            [*root, "chroot", str(mnt), "sh", "-c", _CONFIGURE, "configure",
             "/tmp/vagrant-insecure.pub", fs_uuid, KERNEL_CMDLINE, name.rsplit("/", 1)[-1]],
            log, timeout=600, on_line=on_line,
        )
        run(
            [*root, "chroot", str(mnt), "grub-install", "--target=i386-pc", "--modules=part_msdos ext2", loop],
            log, timeout=600, on_line=on_line,
        )
        put("boot/grub/grub.cfg", _GRUB_CFG.format(uuid=fs_uuid, cmdline=KERNEL_CMDLINE))
        for fs in ("sys", "proc", "dev"):
            run([*root, "umount", str(mnt / fs)], log, timeout=60)
        # Deleted .debs and lists leave blocks behind: hand them back to the
        # sparse file so that qemu-img writes only what is used.
        run([*root, "fstrim", str(mnt)], log, check=False, timeout=300)
        run([*root, "umount", str(mnt)], log, timeout=120)
        run([*root, "losetup", "--detach", loop], log, timeout=60)
        loop = None

        info(f"box {name}: qcow2 and .box")
        img = work / "box.img"
        run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(img)], log, timeout=1200)
        raw.unlink()
        (work / "metadata.json").write_text(
            json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GB}) + "\n"
        )
        (work / "Vagrantfile").write_text(_BOX_VAGRANTFILE)
        part_file = work / target.name
        with tarfile.open(part_file, "w") as tar:  # not compressed: qcow2 is, enough, and unpacking is faster
            for f in ("metadata.json", "Vagrantfile", "box.img"):
                tar.add(work / f, arcname=f)
        meta = {
            "name": name,
            "provider": "libvirt",
            "suite": suite,
            "mirror": mirror,
            "packages": list(BOX_PACKAGES),
            "disk_gb": DISK_GB,
            "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "debootstrap_seconds": round(debootstrap_s, 1),
            "total_seconds": round(time.monotonic() - started, 1),
        }
        images._write_json_atomic(_meta_file(target), meta)
        os.replace(part_file, target)
        log.event(f"box {name}: built {target} in {meta['total_seconds']:.0f}s (debootstrap {debootstrap_s:.0f}s)")
    finally:
        _cleanup(work, loop, log, root)


def _partition_node(loop: str, log: Log, root: list[str]) -> str:
    """``/dev/loopNp1``; without udev, ``partx -a`` makes the kernel (and devtmpfs) show it."""
    part = f"{loop}p1"
    for attempt in range(10):
        if os.path.exists(part):
            return part
        if attempt in (0, 3):
            run([*root, "partx", "-a", loop], log, check=False, timeout=60)
        sysfs = Path("/sys/block") / Path(loop).name / f"{Path(loop).name}p1" / "dev"
        if attempt == 5 and sysfs.exists():  # devtmpfs did not make the node: make it
            major, minor = sysfs.read_text().strip().split(":")
            run([*root, "mknod", part, "b", major, minor], log, check=False, timeout=30)
        time.sleep(0.5)
    raise CommandError(
        f"the partition {part} of the box disk does not appear",
        command=f"losetup --partscan; partx -a {loop}",
        hint="is this a container without loop partition support? the box build needs losetup -P",
        log=log.path,
    )


def _cleanup(work: Path, loop: str | None, log: Log, root: list[str]) -> None:
    """Unmount what is mounted under ``work``, detach the loop device, delete ``work``."""
    for point in images._mounts_under(work):
        run([*root, "umount", "--lazy", point], log, check=False, timeout=60)
    if loop:
        run([*root, "losetup", "--detach", loop], log, check=False, timeout=60)
    # loop devices still attached to a disk of this folder (a killed build)
    listed = run([*root, "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], log, check=False, timeout=60)
    for line in listed.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(work)):
            run([*root, "losetup", "--detach", parts[0]], log, check=False, timeout=60)
    run([*root, "rm", "-rf", "--one-file-system", str(work)], log, check=False, timeout=600)
