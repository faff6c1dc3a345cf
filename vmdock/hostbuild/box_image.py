"""The libvirt box vmdock builds itself, offline, from the Debian mirror.

Nothing but Debian's packages: debootstrap (kernel, GRUB, sshd, sudo,
ifupdown) straight into a partition of a sparse raw disk, the ``vagrant``
user with Vagrant's insecure key and passwordless sudo, GRUB with
``net.ifnames=0`` and a serial console (``templates/box/``), the machines'
apt sources (``templates/debian.sources.j2``), ``qemu-img convert`` to
qcow2, a ``.box`` (tar of metadata.json, Vagrantfile, box.img) cached under
``cache_dir()/boxes/``, and ``vagrant box add --force``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .. import paths, settings
from ..errors import CommandError, ConfigError, ProviderError
from ..runlog import Log, run
from . import boxes, fsutil
from .debootstrap import LineSink, debootstrap
from .machine_image import ensure_machine_image
from .rootfs import DEFAULT_MIRROR, apt_mirror, debian_arch, rootfs_tarball

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
BOX_TEMPLATES = paths.TEMPLATES_DIR / "box"
_TOOLS = ("debootstrap", "sfdisk", "losetup", "partx", "mkfs.ext4", "qemu-img", "chroot", "fstrim")

Info = Callable[[str], None]


def build(
    log: Log,
    *,
    provider: str = "libvirt",
    box: str = "debian12",
    mirror: str | None = None,
    force: bool = False,
    on_line: LineSink | None = None,
    on_info: Info | None = None,
) -> str:
    """`vmdock box build`: the libvirt box (registered with Vagrant), or the docker machine image.

    Returns what was made: the Vagrant box name, or the image tag.
    """
    if provider == "docker":
        boxes.entry(box)
        if box != "debian12":
            raise ConfigError(f"the docker provider's machine image is Debian 12 only, not {box!r}")
        return ensure_machine_image(log, mirror=mirror, on_line=on_line)
    if provider != "libvirt":
        raise ConfigError(
            f"vmdock builds boxes for {', '.join(BUILDABLE)}, not {provider!r}",
            hint="VirtualBox boxes come from Vagrant Cloud or VMDOCK_BOX_URL_<BOX> (a mirror or a local .box)",
        )
    return build_box(log, box=box, mirror=mirror, force=force, on_line=on_line, on_info=on_info)


def build_box(
    log: Log,
    *,
    box: str = "debian12",
    mirror: str | None = None,
    force: bool = False,
    on_line: LineSink | None = None,
    on_info: Info | None = None,
) -> str:
    """Build (or reuse the cached) libvirt ``.box`` and register it with Vagrant.

    Returns the Vagrant box name (``vmdock/debian12``).  The ``.box`` is
    cached as ``cache_dir()/boxes/<box>-libvirt-<arch>.box``; with a cached
    file this only registers it (when Vagrant does not have it yet).
    ``force`` builds anew and re-registers.  The rootfs tarball of the labs'
    base image is made too, so that VMs get it uploaded instead of building
    it under emulation.
    """
    info = on_info or (lambda _m: None)
    e = boxes.entry(box)
    name, suite = e.get("vmdock_box"), e.get("suite")
    if not name or not suite:
        buildable = (b for b, v in boxes.catalog().items() if isinstance(v, dict) and v.get("vmdock_box"))
        raise ConfigError(
            f"box {box!r} cannot be built by vmdock (boxes.yaml gives it no vmdock_box and suite)",
            hint="boxes vmdock builds: " + ", ".join(buildable),
        )
    arch = debian_arch()
    if arch != "amd64":
        raise ProviderError(f"vmdock builds libvirt boxes for amd64 hosts only (this host: {arch})")
    target = boxes.box_file(box, "libvirt", arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    with fsutil.file_lock(target.parent / f"{target.stem}.lock", f"the {box} libvirt box", log):
        if target.is_file() and not force:
            info(f"box {name}: cached {target}")
            log.event(f"box {box}/libvirt: cached {target}")
        else:
            started = time.monotonic()
            _build_box_file(log, target, name=name, suite=suite, mirror=apt_mirror(mirror), on_line=on_line, info=info)
            info(f"box {name}: built {target} ({target.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.0f}s")
        if force or not boxes.registered(name, "libvirt"):
            info(f"box {name}: vagrant box add")
            _vagrant(["box", "add", "--force", "--name", name, "--provider", "libvirt", str(target)], log, on_line=on_line)
            _drop_stale_pool_volumes(log, name)
        else:
            info(f"box {name}: registered with Vagrant already")
    # The labs' base image (debian:bookworm in every machine) is this rootfs,
    # uploaded at provisioning; without it each VM would debootstrap it itself,
    # which takes many minutes under emulation.
    tarball = rootfs_tarball(log, mirror=mirror, suite=suite, on_line=on_line)
    info(f"lab base image rootfs: {tarball}")
    return name


def _vagrant(args: list[str], log: Log, **kw) -> subprocess.CompletedProcess:
    from ..driver import vagrant_env

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
    vols = [line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()]
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    box_vols = [v for v in vols if v.startswith(prefix)]
    if not box_vols:
        return
    backing: set[str] = set()
    for v in vols:
        if v not in box_vols:
            xml = run([*virsh, "vol-dumpxml", "--pool", "default", v], log, check=False, timeout=60).stdout
            backing.update(re.findall(r"<backingStore>\s*<path>([^<]+)</path>", xml))
    for v in box_vols:
        path = run([*virsh, "vol-path", "--pool", "default", v], log, check=False, timeout=60).stdout.strip()
        if path and path not in backing:
            run([*virsh, "vol-delete", "--pool", "default", v], log, check=False, timeout=120)


# --------------------------------------------------------------------------
# the disk


def _template(name: str, **values: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )
    return env.get_template(name).render(**values)


def debian_sources(mirror: str, suite: str) -> str:
    """The box's ``debian.sources``: the machines' template; security updates
    from deb.debian.org when the mirror is Debian's own, else from
    $VMDOCK_APT_SECURITY_MIRROR when set."""
    security = settings.current().apt_security_mirror or (
        "http://deb.debian.org/debian-security" if mirror == DEFAULT_MIRROR else ""
    )
    return _template("debian.sources.j2", mirror=mirror, suite=suite, security_mirror=security,
                     written_by="vmdock box build")


def _check_tools(log: Log) -> Path:
    """The tools the build runs are installed; returns the insecure public key file."""
    for tool in _TOOLS:
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists():
            raise ProviderError(
                f"{tool} is not installed (the box build needs it)",
                hint="sudo bash scripts/host-setup.sh --libvirt", log=log.path,
            )
    key = paths.TEMPLATES_DIR / "machine" / "vagrant-insecure.pub"
    if not key.is_file():
        raise ProviderError(f"{key} is missing", hint="reinstall vmdock (templates/machine/ belongs to it)")
    return key


@dataclass
class _Disk:
    """The box's disk while it is built: a sparse raw file on a loop device, mounted."""

    work: Path
    root: list[str]
    loop: str | None = None
    fs_uuid: str = ""

    @property
    def raw(self) -> Path:
        return self.work / "disk.raw"

    @property
    def mnt(self) -> Path:
        return self.work / "mnt"

    def make(self, log: Log) -> None:
        """One bootable ext4 partition from 1 MiB (GRUB's core.img goes into the gap), mounted."""
        self.mnt.mkdir()
        with open(self.raw, "wb") as fh:
            fh.truncate(DISK_GB << 30)
        run(["sfdisk", "--quiet", str(self.raw)], log, input="label: dos\nstart=2048, type=83, bootable\n", timeout=60)
        self.loop = run([*self.root, "losetup", "--find", "--show", "--partscan", str(self.raw)],
                        log, timeout=60).stdout.strip()
        part = _partition_node(self.loop, log, self.root)
        self.fs_uuid = str(uuid.uuid4())
        run([*self.root, "mkfs.ext4", "-q", "-F", "-L", "vmdock-root", "-U", self.fs_uuid, part], log, timeout=300)
        run([*self.root, "mount", part, str(self.mnt)], log, timeout=60)

    def put(self, rel: str, text: str, log: Log) -> None:
        run([*self.root, "tee", str(self.mnt / rel)], log, input=text, timeout=60)

    def release(self, log: Log) -> None:
        """Trim, unmount and detach: the raw file is complete."""
        # Deleted .debs and lists leave blocks behind: hand them back to the
        # sparse file so that qemu-img writes only what is used.
        run([*self.root, "fstrim", str(self.mnt)], log, check=False, timeout=300)
        run([*self.root, "umount", str(self.mnt)], log, timeout=120)
        if self.loop:
            run([*self.root, "losetup", "--detach", self.loop], log, timeout=60)
            self.loop = None


def _configure(disk: _Disk, log: Log, *, name: str, suite: str, mirror: str, key: Path, on_line: LineSink | None) -> None:
    """In a chroot of the new system: apt sources, the vagrant user, SSH, GRUB."""
    root, mnt = disk.root, disk.mnt
    disk.put("tmp/vagrant-insecure.pub", key.read_text(encoding="utf-8"), log)
    disk.put("etc/apt/sources.list", "", log)
    disk.put("etc/apt/sources.list.d/debian.sources", debian_sources(mirror, suite), log)
    for fs, opts in (("dev", ["--bind", "/dev"]), ("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sys"])):
        run([*root, "mount", *opts, str(mnt / fs)], log, timeout=60)
    script = (BOX_TEMPLATES / "configure.sh").read_text(encoding="utf-8")
    run([*root, "chroot", str(mnt), "sh", "-c", script, "configure",
         "/tmp/vagrant-insecure.pub", disk.fs_uuid, KERNEL_CMDLINE, name.rsplit("/", 1)[-1]],
        log, timeout=600, on_line=on_line)
    run([*root, "chroot", str(mnt), "grub-install", "--target=i386-pc", "--modules=part_msdos ext2", str(disk.loop)],
        log, timeout=600, on_line=on_line)
    disk.put("boot/grub/grub.cfg", _template("box/grub.cfg.j2", uuid=disk.fs_uuid, cmdline=KERNEL_CMDLINE), log)
    for fs in ("sys", "proc", "dev"):
        run([*root, "umount", str(mnt / fs)], log, timeout=60)


def _pack(disk: _Disk, log: Log, target: Path) -> Path:
    """qcow2 and the ``.box`` tar, beside the raw disk (which goes)."""
    img = disk.work / "box.img"
    run(["qemu-img", "convert", "-O", "qcow2", str(disk.raw), str(img)], log, timeout=1200)
    disk.raw.unlink()
    (disk.work / "metadata.json").write_text(
        json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GB}) + "\n"
    )
    (disk.work / "Vagrantfile").write_text((BOX_TEMPLATES / "Vagrantfile").read_text(encoding="utf-8"))
    part_file = disk.work / target.name
    with tarfile.open(part_file, "w") as tar:  # not compressed: qcow2 is, enough, and unpacking is faster
        for f in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(disk.work / f, arcname=f)
    return part_file


def _build_box_file(log: Log, target: Path, *, name: str, suite: str, mirror: str,
                    on_line: LineSink | None, info: Info) -> None:
    key = _check_tools(log)
    root = fsutil.root_prefix("building the box")
    cache = target.parent
    fsutil.remove_stale_build_dirs(cache, f".{target.stem}.*", log, root, loops=True)
    disk = _Disk(cache / f".{target.stem}.{os.getpid()}", root)
    disk.work.mkdir(parents=True)
    started = time.monotonic()
    try:
        disk.make(log)
        info(f"box {name}: debootstrap {suite} from {mirror}")
        seconds = debootstrap(log, disk.mnt, suite=suite, mirror=mirror, arch="amd64", root=root,
                              include=BOX_PACKAGES, step="box", on_line=on_line)
        info(f"box {name}: vagrant user, SSH, GRUB")
        _configure(disk, log, name=name, suite=suite, mirror=mirror, key=key, on_line=on_line)
        disk.release(log)
        info(f"box {name}: qcow2 and .box")
        part_file = _pack(disk, log, target)
        meta = {
            "name": name, "provider": "libvirt", "suite": suite, "mirror": mirror,
            "packages": list(BOX_PACKAGES), "disk_gb": DISK_GB, "built_at": fsutil.utc_now(),
            "debootstrap_seconds": round(seconds, 1), "total_seconds": round(time.monotonic() - started, 1),
        }
        fsutil.write_sidecar(target, meta)
        os.replace(part_file, target)
        log.event(f"box {name}: built {target} in {meta['total_seconds']:.0f}s (debootstrap {seconds:.0f}s)")
    finally:
        fsutil.remove_build_dir(disk.work, log, root, loops=True)


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
