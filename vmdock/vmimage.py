"""Lab images of real VMs (libvirt): a machine's disk as a versioned Vagrant box.

A lab image of a libvirt machine is a Vagrant box named ``vmdock/<lab>-<machine>``
(``box_name``) whose version says when it was made and which fingerprint made it
(``box_version``).  Its ``info.json`` (Vagrant's own box info, `vagrant box list
-i` shows it) carries the lab image's tag and labels (``vmdock.labimages``: the
whole fingerprint, the steps it contains, what vmdock needs to go on from it).

* ``package_machine``: halt the machine and turn its disk into a ``.box``, by
  vagrant-libvirt's own ``vagrant package`` (``METHOD_PACKAGE``: flatten,
  virt-sysprep, virt-sparsify, gzip) or by ``qemu-img convert`` alone
  (``METHOD_QEMU_IMG``: flatten, no sysprep, no compression).
* ``register_box``: ``vagrant box add`` of that box under its versioned name,
  older versions removed, and the image put into libvirt's pool under the name
  vagrant-libvirt looks for, so the first ``up`` from it uploads nothing.
* ``registered_image``: what Vagrant has registered for a lab's machine (its
  version and info), read from Vagrant's box folder without a ``vagrant`` call.

A machine made from a lab image has a copy-on-write overlay over the image's
pool volume as its disk (vagrant-libvirt makes it): `vmdock reset` destroys
the machine and makes it anew, i.e. a new empty overlay over the same volume,
nothing copied and nothing provisioned; it costs a boot.

Stale images are never used silently: each capture gets a new version (so a new
pool volume: vagrant-libvirt reuses a pool volume whose name it knows), the
Vagrantfile names the exact version, and the labels in ``info.json`` are what
the engine compares with the lab (``labimages.choose``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .driver import vagrant_env
from .errors import CommandError, ConfigError, StateError
from .hostbuild import box_image, boxes
from .runlog import Log, run

LineSink = Callable[[str], None]

PROVIDER = "libvirt"
POOL = "default"
VIRSH = ("virsh", "-c", "qemu:///system")
INFO_FILE = "info.json"

METHOD_PACKAGE = "vagrant-package"
METHOD_QEMU_IMG = "qemu-img"
METHODS = (METHOD_PACKAGE, METHOD_QEMU_IMG)

#: What virt-sysprep (run by `vagrant package`) clears in a lab image: what a
#: reboot would lose or what names this one machine.  Not vagrant-libvirt's
#: default (sysprep's defaults but the SSH folders, host keys and customize):
#: that still drops editor backups (*~, *.bak: lab files too), /var/tmp and
#: more a lab may have made.  The SSH folders stay: Vagrant's insecure key in
#: them is what vmdock logs in with.
SYSPREP_OPERATIONS = "bash-history,crash-data,dhcp-client-state,logfiles,machine-id,package-manager-cache,utmp"

_PACKAGE_TIMEOUT = 3600
_BOX_VAGRANTFILE = """\
# A vmdock lab image: the disk of one lab machine (`vmdock image build`).
Vagrant.configure("2") do |config|
  config.ssh.insert_key = false
  config.vm.synced_folder ".", "/vagrant", disabled: true
end
"""


@dataclass(frozen=True)
class BoxImage:
    """A lab image registered with Vagrant."""

    name: str
    version: str
    info: dict
    directory: Path


# --------------------------------------------------------------------------
# names


def box_name(lab: str, machine: str) -> str:
    """The Vagrant box of a lab machine's image: ``vmdock/<lab>-<machine>``."""
    return f"vmdock/{lab}-{machine}"


def box_version(fingerprint: str, when: _dt.datetime | None = None) -> str:
    """``<UTC time>.<first 32 bits of the fingerprint, decimal>``: numeric (Vagrant
    wants that), newer captures sort higher, and it names what made the image."""
    if not re.fullmatch(r"[0-9a-f]{8,}", fingerprint):
        raise ConfigError(f"a lab image's fingerprint must be hex digits, not {fingerprint!r}")
    stamp = (when or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d%H%M%S")
    return f"{stamp}.{int(fingerprint[:8], 16)}"


def _box_folder(name: str) -> Path:
    return boxes.vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-")


def pool_volume_name(name: str, version: str) -> str:
    """The pool volume vagrant-libvirt makes of a box's ``box.img`` (handle_box_image.rb)."""
    return f"{name.replace('/', '-VAGRANTSLASH-')}_vagrant_box_image_{version}_box.img"


def registered_image(name: str) -> BoxImage | None:
    """The newest registered version of lab image ``name``, or None (no ``vagrant`` call)."""
    found = []
    for meta in _box_folder(name).glob(f"*/{PROVIDER}/metadata.json"):
        version = meta.parent.parent.name
        try:
            key = tuple(int(p) for p in version.split("."))
        except ValueError:
            continue  # not a vmdock lab image
        found.append((key, version, meta.parent))
    if not found:
        return None
    _, version, folder = max(found)
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    return BoxImage(name, version, info, folder)


# --------------------------------------------------------------------------
# capture


def virsh(args: list[str], log: Log, **kw):
    return run([*VIRSH, *args], log, timeout=kw.pop("timeout", 120), **kw)


def domain_disk(domain: str, log: Log) -> Path:
    """The file of a domain's first disk (vda)."""
    out = virsh(["domblklist", domain, "--details"], log).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "disk" and parts[3] != "-":
            return Path(parts[3])
    raise StateError(f"libvirt domain {domain} has no disk", log=log.path)


def _qemu_img_info(path: Path, log: Log) -> dict:
    out = run(["qemu-img", "info", "--output=json", "--force-share", str(path)], log, timeout=60).stdout
    info: dict = json.loads(out)
    return info


def package_machine(
    lab_home: Path,
    machine: str,
    output: Path,
    info: dict,
    log: Log,
    *,
    domain: str,
    method: str = METHOD_PACKAGE,
    tcg: bool = False,
    on_line: LineSink | None = None,
) -> Path:
    """Halt ``machine`` of the Vagrant project in ``lab_home`` and write its disk as a ``.box``.

    ``info`` (fingerprint, steps, …) goes into the box as ``info.json``.  The
    machine is left halted.  ``tcg``: KVM does not work here, so libguestfs'
    appliance (vagrant-package method) must be emulated too.  Returns ``output``.
    """
    if method not in METHODS:
        raise ConfigError(f"lab image method {method!r}: one of {', '.join(METHODS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmdock-image-", dir=output.parent) as tmp:
        info_file = Path(tmp) / INFO_FILE
        info_file.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if method == METHOD_PACKAGE:
            _vagrant_package(lab_home, machine, output, info_file, log, tcg=tcg, on_line=on_line)
        else:
            _qemu_img_package(lab_home, machine, output, info_file, log, domain=domain, on_line=on_line)
    return output


def _vagrant_package(
    lab_home: Path, machine: str, output: Path, info_file: Path, log: Log, *, tcg: bool, on_line
) -> None:
    """vagrant-libvirt's package action (package_domain.rb): halt, download the
    volume from the pool, ``qemu-img rebase -b ""`` (flatten), virt-sysprep,
    virt-sparsify --in-place, then Vagrant's ``bsdtar -czf``.  It runs the two
    libguestfs tools with Ruby backticks and ignores how they exit: their
    errors only show on stderr, so they are looked for there."""
    if not shutil.which("virt-sysprep") or not shutil.which("virt-sparsify"):
        raise CommandError(
            "`vagrant package` on libvirt needs virt-sysprep and virt-sparsify",
            hint="apt-get install libguestfs-tools, or capture with the qemu-img method",
            log=log.path,
        )
    env = vagrant_env(PROVIDER)
    env["VAGRANT_LIBVIRT_VIRT_SYSPREP_OPERATIONS"] = SYSPREP_OPERATIONS
    env["VAGRANT_LIBVIRT_BOX_FORMAT_VERSION"] = "v1"  # one disk: the lab machine's
    env.setdefault("LIBGUESTFS_BACKEND", "direct")  # libguestfs' own qemu, not a libvirt domain
    if tcg:  # libguestfs tries KVM first when /dev/kvm opens, and a sick KVM hangs its appliance
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    proc = run(
        ["vagrant", "package", machine, "--output", str(output), "--info", str(info_file)],
        log, cwd=lab_home, env=env, timeout=_PACKAGE_TIMEOUT, on_line=on_line,
    )
    output_lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    failed = [line for line in output_lines if re.match(r"virt-(sysprep|sparsify): error", line)]
    if failed:
        output.unlink(missing_ok=True)
        raise CommandError(
            "virt-sysprep/virt-sparsify failed inside `vagrant package` (it does not check them)",
            command=f"vagrant package {machine}", stderr_tail="\n".join(failed[-5:]), log=log.path,
            hint="`libguestfs-test-tool` shows why libguestfs cannot start here",
        )


def _qemu_img_package(
    lab_home: Path, machine: str, output: Path, info_file: Path, log: Log, *, domain: str, on_line
) -> None:
    """The machine's disk flattened by ``qemu-img convert`` (its backing box folded in),
    with metadata.json and a Vagrantfile, in an uncompressed tar."""
    run(["vagrant", "halt", machine], log, cwd=lab_home, env=vagrant_env(PROVIDER), timeout=600, on_line=on_line)
    disk = domain_disk(domain, log)
    work = info_file.parent
    image = work / "box.img"
    run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(image)], log, timeout=_PACKAGE_TIMEOUT)
    virtual_gb = -(-int(_qemu_img_info(image, log)["virtual-size"]) // 1024**3)
    (work / "metadata.json").write_text(
        json.dumps({"provider": PROVIDER, "format": "qcow2", "virtual_size": virtual_gb}) + "\n", encoding="utf-8"
    )
    (work / "Vagrantfile").write_text(_BOX_VAGRANTFILE, encoding="utf-8")
    partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    with tarfile.open(partial, "w") as tar:  # gzip would cost minutes of CPU for little: qcow2 is sparse
        for name in ("metadata.json", "Vagrantfile", INFO_FILE, "box.img"):
            tar.add(work / name, arcname=name)
    os.replace(partial, output)


# --------------------------------------------------------------------------
# register


def register_box(box_file: Path, name: str, version: str, log: Log, *, on_line: LineSink | None = None) -> BoxImage:
    """``vagrant box add`` ``box_file`` as ``name`` at ``version``; drop older versions
    (and their pool volumes no disk is based on); put the image into the pool."""
    with tempfile.TemporaryDirectory(prefix="vmdock-box-") as tmp:
        catalog = Path(tmp) / "metadata.json"
        url = Path(box_file).resolve().as_uri()
        catalog.write_text(json.dumps({
            "name": name,
            "versions": [{"version": version, "providers": [{"name": PROVIDER, "url": url}]}],
        }), encoding="utf-8")
        run(["vagrant", "box", "add", "--force", "--provider", PROVIDER, str(catalog)], log,
            env=vagrant_env(), timeout=_PACKAGE_TIMEOUT, on_line=on_line)
    for old in _box_folder(name).iterdir():
        if old.name != version and (old / PROVIDER).is_dir():
            run(["vagrant", "box", "remove", name, "--box-version", old.name, "--provider", PROVIDER, "--force"],
                log, env=vagrant_env(), timeout=600, check=False)
    box_image._drop_stale_pool_volumes(log, name)
    image = registered_image(name)
    if image is None or image.version != version:
        raise CommandError(f"vagrant box add did not register {name} {version}", log=log.path)
    upload_to_pool(image, log)
    return image


def upload_to_pool(image: BoxImage, log: Log) -> str:
    """The image's ``box.img`` as the pool volume vagrant-libvirt would make at the first ``up``."""
    vol = pool_volume_name(image.name, image.version)
    if virsh(["vol-info", "--pool", POOL, vol], log, check=False).returncode == 0:
        return vol
    src = image.directory / "box.img"
    size = _qemu_img_info(src, log)["virtual-size"]
    virsh(["vol-create-as", POOL, vol, f"{size}B", "--allocation", "0", "--format", "qcow2"], log)
    try:
        virsh(["vol-upload", "--pool", POOL, vol, str(src)], log, timeout=_PACKAGE_TIMEOUT)
    except BaseException:
        virsh(["vol-delete", "--pool", POOL, vol], log, check=False)
        raise
    return vol
