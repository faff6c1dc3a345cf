"""`vmdock bundle export/import/inspect`: one offline file, with real dockerd and real Vagrant.

A "teacher" cache (a small rootfs tarball, a small libvirt box) and three tiny
images made here with `docker import` (a machine image, a lab image, and the
image the test lab ch96-bundle-needs needs) go into one bundle.  Each test then
plays a student host: the images removed, an empty VMDOCK_CACHE, no registry.
Only images tagged `vmdock-test/…` are made and removed; the host's own machine
image is kept out by giving the test one its own role label.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from vmdock import bundle, cli, needs
from vmdock.bundle_manifest import (
    MANIFEST,
    BundleWriter,
    ImageRef,
    Manifest,
    Member,
    copy_file,
)
from vmdock.errors import MissingError
from vmdock.events import Recorder
from vmdock.hostbuild import machine_image, rootfs
from vmdock.loader import resolve
from vmdock.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LABS = ROOT / "tests" / "bundle_labs"
LAB = "ch96-bundle-needs"
NEEDS_REF = "vmdock-test/needs:1"
RUN = uuid.uuid4().hex[:8]
MACHINE_REPO = "vmdock-test/machine"  # stands for vmdock/machine in these tests
STALE_MACHINE_REF = f"{MACHINE_REPO}:stale-{RUN}"
LAB_IMAGE_REF = f"vmdock-test/lab-{LAB}:{RUN}"
TEST_ROLE = "vmdock.role=vmdock-test-machine-image"  # only the test's machine image carries it
CLOSED_PROBE = "http://127.0.0.1:9/v2/"  # the discard port on loopback: nothing listens
BOX = "debian12-libvirt-amd64.box"
ROOTFS = "rootfs-bookworm-amd64.tar.gz"


def docker(*args: str, check: bool = True, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], input=data, capture_output=True, check=check, timeout=300)


def vmdock_test_images() -> dict[str, str]:
    """Every `vmdock-test/` image on this host: ref → ID."""
    out = docker("image", "ls", "--no-trunc", "--filter", "reference=vmdock-test/*",
                 "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.decode()
    return dict(line.split() for line in out.splitlines())




def _tar(files: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


CREATED: list[str] = []  # the images this module made: the only ones it removes


def _tiny_image(ref: str, *labels: str) -> None:
    change = [a for label in labels for a in ("--change", f"LABEL {label}")]
    CREATED.append(ref)
    docker("import", *change, "-", ref, data=_tar({"hello": f"#!/bin/sh\necho {ref}\n".encode()}))


def _remove_test_images() -> None:
    for ref in [*CREATED, NEEDS_REF]:
        docker("rmi", "-f", ref, check=False)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The bundle of the test lab, exported from a cache and images made here."""
    tmp = tmp_path_factory.mktemp("teacher")
    cache = tmp / "cache"
    (cache / "boxes").mkdir(parents=True)
    (cache / ROOTFS).write_bytes(_tar({f"etc/file{i}": os.urandom(2000) for i in range(20)}, gz=True))
    (cache / "boxes" / BOX).write_bytes(_tar({
        "metadata.json": b'{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}\n',
        "Vagrantfile": b"Vagrant.configure('2') { |c| }\n",
        "box.img": os.urandom(1 << 20),
    }))
    (cache / "boxes" / f"{BOX}.json").write_text(json.dumps({"name": "vmdock-test/box", "provider": "libvirt"}))
    path = tmp / "class.vmdock"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMDOCK_HOME", str(tmp / "home"))
        mp.setenv("VMDOCK_CACHE", str(cache))
        for name in ("VMDOCK_IMAGES_DIR", "VMDOCK_APT_MIRROR"):
            mp.delenv(name, raising=False)
        mp.setattr(machine_image, "ROLE_LABEL", TEST_ROLE)
        mp.setattr(machine_image, "MACHINE_IMAGE_REPO", MACHINE_REPO)
        # the machine image `vmdock up` would use with this rootfs, and an older one left out
        machine_ref = machine_image.machine_image_tag()
        _tiny_image(machine_ref, TEST_ROLE, "vmdock.mirror=http://mirror.test/debian")
        _tiny_image(STALE_MACHINE_REF, TEST_ROLE)
        _tiny_image(LAB_IMAGE_REF, f"vmdock.lab-image.lab={LAB}")
        _tiny_image(NEEDS_REF)
        ids = {ref: docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip()
               for ref in (machine_ref, LAB_IMAGE_REF)}
        assert cli.main(["--labs-dir", str(LABS), "bundle", "export", str(path), LAB]) == 0
    try:
        yield path, ids
    finally:
        _remove_test_images()


@pytest.fixture
def student(tmp_path, monkeypatch) -> Path:
    """A host with none of the test images, an empty cache and no registry; returns the cache."""
    _remove_test_images()
    cache = tmp_path / "student-cache"
    for name in ("VMDOCK_IMAGES_DIR", "VMDOCK_REGISTRY_MIRRORS", "VMDOCK_LABS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "student-home"))
    monkeypatch.setenv("VMDOCK_CACHE", str(cache))
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant.d"))
    monkeypatch.setenv("VMDOCK_REGISTRY_PROBE", CLOSED_PROBE)
    monkeypatch.setattr(machine_image, "ROLE_LABEL", TEST_ROLE)
    for name in ("VMDOCK_LIBVIRT_DRIVER", "VMDOCK_APT_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    return cache


def _manifest(path: Path) -> Manifest:
    return bundle.read_manifest(path)


# -- export, inspect -------------------------------------------------------------------------


def test_export_carries_images_caches_and_needs(teacher, capsys):
    path, ids = teacher
    m = _manifest(path)
    kinds = {x.kind: x for x in m.members}
    assert set(kinds) == {"docker-images", "rootfs", "box", "image-tarball"}
    assert {(r.ref, r.id) for r in kinds["docker-images"].images} == set(ids.items())
    assert kinds["rootfs"].target == ROOTFS and kinds["rootfs"].compression == "none"
    assert kinds["box"].meta["name"] == "vmdock-test/box" and kinds["box"].compression == "zstd"
    assert [r.ref for r in kinds["image-tarball"].images] == [NEEDS_REF]
    assert any(n.startswith("left out 1 other machine images") and STALE_MACHINE_REF in n for n in m.notes)
    (lab,) = m.labs
    assert lab.name == LAB and lab.lab_images == [LAB_IMAGE_REF] and lab.needs_images == [NEEDS_REF]
    assert len(lab.fingerprint) == 64 and m.format_version == 1
    code, out, _ = run(capsys, "bundle", "inspect", str(path), "--json")
    assert code == 0 and json.loads(out)["labs"][0]["name"] == LAB
    code, out, _ = run(capsys, "bundle", "list", str(path))
    assert code == 0 and LAB_IMAGE_REF in out and LAB in out


def test_export_of_a_lab_without_lab_images_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(machine_image, "ROLE_LABEL", TEST_ROLE)
    events = Recorder()
    lab = resolve("ch91-alpha", [ROOT / "tests" / "labs" / "good"])
    manifest = bundle.export(tmp_path / "b.vmdock", [lab], Settings(), events, bundle.log_file())
    bundled = [r.ref for m in manifest.members for r in m.images]
    assert not any(ref.startswith("vmdock/lab-") for ref in bundled)
    assert any("no lab images built here" in n for n in manifest.labs[0].notes)
    assert any("no rootfs tarball" in n for n in manifest.notes)
    assert any(e[0] == "info" and "no lab images built here" in e[1] for e in events.events)


# -- import ----------------------------------------------------------------------------------


def test_import_makes_the_online_lab_pass_its_preflight(teacher, student, capsys):
    path, ids = teacher
    lab = resolve(LAB, [LABS]).lab
    with pytest.raises(MissingError):  # before: no registry, nothing loaded
        needs.check(lab, Settings.from_env())
    code, _, err = run(capsys, "--labs-dir", str(LABS), "up", LAB)
    assert code == MissingError.exit_status and "bundle import" in err

    code, out, err = run(capsys, "bundle", "import", str(path))
    assert code == 0, err
    assert f"note: lab {LAB} is not on this host" in out  # no --labs-dir: the test lab is not found
    assert "loaded: docker-images" in out and f"imported: rootfs {ROOTFS}" in out
    for ref, image_id in ids.items():
        assert docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip() == image_id
    assert (student / ROOTFS).is_file() and rootfs.rootfs_meta(student / ROOTFS)["sha256"]
    meta = json.loads((student / f"{ROOTFS}.json").read_text())
    assert meta["mtime_ns"] == (student / ROOTFS).stat().st_mtime_ns  # no rehash on first use
    assert "registered with Vagrant as vmdock-test/box" in out
    assert "built with apt mirror" not in out  # the machine image serves any mirror here
    vagrant_boxes = Path(os.environ["VAGRANT_HOME"]) / "boxes"
    assert list(vagrant_boxes.glob("vmdock-test-VAGRANTSLASH-box/*/libvirt/metadata.json"))

    events = Recorder()
    found = needs.check(lab, Settings.from_env(), on_info=events.info)
    assert found == {NEEDS_REF: needs.bundle_images_dir() / "vmdock-test_needs_1.tar"}
    assert any("from the bundle" in e[1] for e in events.events)
    assert needs.tarball_tags(found[NEEDS_REF]) == [NEEDS_REF]
    os.environ["VMDOCK_LIBVIRT_DRIVER"] = "qemu"  # no KVM probe: rendering is all this test asks for
    code, out, err = run(capsys, "--labs-dir", str(LABS), "render", LAB, "--provider", "libvirt")
    assert code == 0 and Path(out.replace("\n", "")).is_file(), err  # rich wraps the printed path at 80 columns
    assert not list(student.glob(".bundle-import.*"))  # no staging left behind


def test_import_twice_is_a_no_op(teacher, student, capsys, tmp_path):
    path, _ = teacher
    assert run(capsys, "bundle", "import", str(path))[0] == 0
    before_images, before_cache = vmdock_test_images(), _snapshot(student)
    code, out, err = run(capsys, "--labs-dir", str(LABS), "bundle", "import", str(path))
    assert code == 0, err
    assert "note:" not in out  # the lab here is the one the bundle was made for
    statuses = [line for line in out.splitlines() if ": " in line and "imported (" not in line]
    assert len(statuses) == 4 and all(s.startswith("already present") for s in statuses), out
    assert vmdock_test_images() == before_images
    changed = tmp_path / "labs"
    shutil.copytree(LABS, changed)
    (changed / LAB / "notes.txt").write_text("a file the bundled lab did not have\n")
    code, out, err = run(capsys, "--labs-dir", str(changed), "bundle", "import", str(path))
    assert code == 0 and f"note: lab {LAB} here differs from the one the bundle was made for" in out, out + err
    after = _snapshot(student)
    after.pop("bundle.log")
    before_cache.pop("bundle.log")
    assert after == before_cache


# -- refusals: nothing loaded, nothing written ------------------------------------------------


def _rewrite(src: Path, dst: Path, drop: str = "", manifest: dict | None = None) -> None:
    with tarfile.open(src) as old, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as new:
        for info in old:
            if info.name == drop:
                continue
            data = old.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == MANIFEST and manifest is not None:
                data = json.dumps(manifest).encode()
                info.size = len(data)
            new.addfile(info, io.BytesIO(data))


def _member(path: Path, kind: str) -> tarfile.TarInfo:
    m = next(x for x in _manifest(path).members if x.kind == kind)
    with tarfile.open(path) as tar:
        return tar.getmember(m.path)


def _damage(how: str, src: Path, dst: Path) -> str:
    """Write a damaged copy of ``src``; return what the error must name."""
    data = bytearray(src.read_bytes())
    if how == "truncated":
        dst.write_bytes(data[: len(data) // 2])
        return "truncated"
    if how == "cut before the manifest":
        with tarfile.open(src) as tar:
            dst.write_bytes(data[: tar.getmember(MANIFEST).offset])
        return "no manifest.json: the file is truncated"
    if how == "flipped byte":
        info = _member(src, "docker-images")
        data[info.offset_data + info.size // 2] ^= 0x01
        dst.write_bytes(data)
        return f"member {info.name} is damaged"
    if how == "damaged header":
        info = _member(src, "image-tarball")
        data[info.offset + 3] ^= 0x01
        dst.write_bytes(data)
        return f"damaged header at byte {info.offset}"
    if how == "wrong format version":
        manifest = json.loads(_manifest(src).model_dump_json())
        _rewrite(src, dst, manifest={**manifest, "format_version": 99})
        return "bundle format version 99"
    member = next(m.path for m in _manifest(src).members if m.kind == "rootfs")
    _rewrite(src, dst, drop=member)
    return f"member {member} is missing"


@pytest.mark.parametrize("how", ["truncated", "cut before the manifest", "flipped byte", "damaged header",
                                 "wrong format version", "missing member"])
def test_damaged_bundle_is_refused_and_nothing_is_loaded(teacher, student, capsys, tmp_path, how):
    path, _ = teacher
    bad = tmp_path / "bad.vmdock"
    expected = _damage(how, path, bad)
    before_images, before_cache = vmdock_test_images(), _snapshot(student)
    code, out, err = run(capsys, "bundle", "import", str(bad))
    assert code == 2, out + err
    assert expected in err and "Traceback" not in err, err
    assert vmdock_test_images() == before_images == {}
    assert _snapshot(student) == before_cache


def test_a_failed_docker_load_leaves_no_file_and_no_image(student, tmp_path, capsys):
    """Every checksum is right but dockerd refuses the images: the staged rootfs is not kept."""
    rootfs = tmp_path / ROOTFS
    rootfs.write_bytes(_tar({"etc/hostname": b"x\n"}, gz=True))
    path = tmp_path / "broken-images.vmdock"
    with open(path, "wb") as fh:
        w = BundleWriter(fh)
        bogus = w.add("members/docker-images.tar.zst", "zstd", lambda s: s.write(b"not a docker archive\n" * 1000))
        real = w.add(f"members/{ROOTFS}", "none", copy_file(rootfs))
        members = [
            Member(path="members/docker-images.tar.zst", kind="docker-images", compression="zstd",
                   images=[ImageRef(ref=NEEDS_REF, id="sha256:" + "0" * 64)], **bogus.model_dump()),
            Member(path=f"members/{ROOTFS}", kind="rootfs", target=ROOTFS, compression="none", **real.model_dump()),
        ]
        data = Manifest(vmdock_version="test", created="now", members=members, labs=[]).model_dump_json().encode()
        w.add(MANIFEST, "none", lambda s: s.write(data))
        w.close()
    code, _, err = run(capsys, "bundle", "import", str(path))
    assert code == 3 and "docker load failed" in err, err
    assert not (student / ROOTFS).exists() and not list(student.glob(".bundle-import.*"))
    assert vmdock_test_images() == {}


# -- memory ----------------------------------------------------------------------------------

_MEASURE = """
import resource, sys
from vmdock.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
sys.exit(code)
"""


def test_streaming_keeps_memory_bounded(tmp_path):
    """A 300 MB member (random, so zstd cannot shrink it) goes in and out with bounded memory."""
    size = 300 << 20
    boxes = tmp_path / "teacher" / "boxes"
    boxes.mkdir(parents=True)
    with open(boxes / BOX, "wb") as fh:
        fh.writelines(os.urandom(1 << 20) for _ in range(size >> 20))
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "VMDOCK_HOME": str(tmp_path / "home")}
    path = tmp_path / "big.vmdock"
    peaks = {}
    for step, cache, argv in (("export", "teacher", ["export", str(path), LAB]),
                              ("import", "student", ["import", str(path)])):
        out = subprocess.run([sys.executable, "-c", _MEASURE, "--labs-dir", str(LABS), "bundle", *argv],
                             env={**env, "VMDOCK_CACHE": str(tmp_path / cache)},
                             capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, out.stderr
        peaks[step] = int(out.stdout.split()[-1])
    assert (tmp_path / "student" / "boxes" / BOX).stat().st_size == size
    assert path.stat().st_size > size  # stored, not shrunk
    assert max(peaks.values()) < 100, f"peak RSS in MiB: {peaks} for a {size >> 20} MiB member"


def test_a_member_past_8_gib_keeps_a_one_block_header():
    """The header is rewritten in place once the size is known: it must stay 512 bytes (GNU base-256 size)."""
    from vmdock.bundle_manifest import _header

    size = 10 << 30
    buf = _header("members/docker-images.tar.zst", size)
    assert len(buf) == tarfile.BLOCKSIZE
    assert tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape").size == size
