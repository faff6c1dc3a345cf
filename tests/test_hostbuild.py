"""vmdock.hostbuild's shared helpers: the file lock, atomic JSON, sidecars,
build-folder cleanup and the host-facts cache.  Real files, real processes
(another process holds the lock), no dockerd, no debootstrap."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmdock.errors import BusyError
from vmdock.hostbuild import fsutil, hostfacts
from vmdock.runlog import Log

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def log(tmp_path) -> Log:
    return Log(tmp_path / "vmdock.log")


def _hold_lock(lock: Path, seconds: float) -> subprocess.Popen:
    """Another Python process holding ``lock`` through fsutil.file_lock."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from vmdock.hostbuild import fsutil
        from vmdock.runlog import Log
        with fsutil.file_lock(Path({str(lock)!r}), "a test", Log(Path("/dev/null"))):
            print("locked", flush=True)
            time.sleep({seconds})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_file_lock_waits_for_another_process(tmp_path, log):
    lock = tmp_path / "x.lock"
    holder = _hold_lock(lock, 1.0)
    try:
        started = time.monotonic()
        with fsutil.file_lock(lock, "the thing", log, wait=30):
            waited = time.monotonic() - started
    finally:
        holder.wait(10)
    assert waited >= 0.5
    assert "waiting for another vmdock process that is building the thing" in log.path.read_text()


def test_file_lock_gives_up_with_a_busy_error(tmp_path, log):
    lock = tmp_path / "x.lock"
    holder = _hold_lock(lock, 5.0)
    try:
        with pytest.raises(BusyError) as info, fsutil.file_lock(lock, "the thing", log, wait=0.6):
            pass
    finally:
        holder.kill()
        holder.wait(10)
    assert "the thing" in str(info.value) and str(lock) in (info.value.hint or "")


def test_file_lock_uncontended_is_silent_and_reusable(tmp_path, log):
    lock = tmp_path / "sub" / "x.lock"
    for _ in range(2):
        with fsutil.file_lock(lock, "the thing", log):
            assert lock.exists()
    assert not log.path.exists()


def test_write_json_atomic_and_read_json(tmp_path):
    path = tmp_path / "d" / "f.json"
    fsutil.write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"], "temporary file left behind"
    with pytest.raises(TypeError):
        fsutil.write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}, "a failed write changed the file"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
    assert fsutil.read_json(tmp_path / "missing.json") == {}
    (tmp_path / "list.json").write_text("[1]")
    assert fsutil.read_json(tmp_path / "list.json") == {}
    (tmp_path / "bad.json").write_text("{")
    assert fsutil.read_json(tmp_path / "bad.json") == {}


def test_sidecar_and_sha256(tmp_path):
    f = tmp_path / "thing.tar.gz"
    f.write_bytes(b"abc")
    assert fsutil.sidecar(f) == tmp_path / "thing.tar.gz.json"
    assert fsutil.read_sidecar(f) == {}
    fsutil.write_sidecar(f, {"built_at": "now"})
    assert fsutil.read_sidecar(f) == {"built_at": "now"}
    assert fsutil.sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_remove_build_dir_unmounts_first_and_never_crosses_a_mount(tmp_path, log):
    build = tmp_path / ".rootfs-x.123"
    (build / "rootfs" / "proc").mkdir(parents=True)
    (build / "rootfs" / "etc").mkdir()
    (build / "rootfs" / "etc" / "passwd").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    subprocess.run(["mount", "--bind", str(outside), str(build / "rootfs" / "proc")], check=True)
    try:
        assert fsutil.mounts_under(build) == [str(build / "rootfs" / "proc")]
        fsutil.remove_build_dir(build, log, [])
    finally:
        subprocess.run(["umount", str(build / "rootfs" / "proc")], check=False, capture_output=True)
    assert not build.exists()
    assert (outside / "keep").read_text() == "precious"
    assert fsutil.mounts_under(tmp_path) == []
    assert "umount --lazy" in log.path.read_text()


def test_remove_stale_build_dirs(tmp_path, log):
    (tmp_path / ".box-x.1" / "mnt").mkdir(parents=True)
    (tmp_path / ".box-x.2").write_text("half a file")
    (tmp_path / "box-x.box").write_text("the cached box")
    fsutil.remove_stale_build_dirs(tmp_path, ".box-x.*", log, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box-x.box", "vmdock.log"]


def test_host_facts_keep_other_keys(tmp_path, monkeypatch, log):
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    assert hostfacts.read_fact("kvm") == {}
    hostfacts.write_fact("kvm", {"usable": True}, log)
    hostfacts.write_fact("privileged", {"default": {"allowed": False}})
    assert hostfacts.read_fact("kvm") == {"usable": True}
    data = json.loads((tmp_path / "cache" / "host-facts.json").read_text())
    assert data == {"kvm": {"usable": True}, "privileged": {"default": {"allowed": False}}}
    (tmp_path / "cache" / "host-facts.json").write_text('{"kvm": "garbage"}')
    assert hostfacts.read_fact("kvm") == {}


def test_kvm_probe_without_dev_kvm_boots_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hostfacts.os.path, "exists", lambda p: False)
    monkeypatch.setattr(hostfacts, "_boot_guest", lambda *a: pytest.fail("booted without /dev/kvm"))
    usable, why = hostfacts.kvm_probe()
    assert not usable and "no /dev/kvm" in why
    assert not (tmp_path / "cache" / "host-facts.json").exists()


def test_kvm_probe_asks_again_after_a_reboot(monkeypatch, tmp_path):
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hostfacts, "_kvm_unavailable", lambda qemu: None)
    monkeypatch.setattr(hostfacts, "_qemu_binary", lambda: "/usr/bin/qemu-system-x86_64")
    boots = []
    monkeypatch.setattr(hostfacts, "_boot_guest", lambda q, accel, d, t: boots.append(accel) or (True, 0.3, "ok"))
    monkeypatch.setattr(hostfacts, "_boot_id", lambda: "boot-1")
    assert hostfacts.kvm_probe()[0] is True
    assert hostfacts.kvm_probe()[0] is True
    assert boots == ["kvm", "tcg"]
    monkeypatch.setattr(hostfacts, "_boot_id", lambda: "boot-2")
    assert hostfacts.kvm_probe()[0] is True
    assert boots == ["kvm", "tcg"] * 2
    assert hostfacts.kvm_probe(refresh=True)[0] is True
    assert boots == ["kvm", "tcg"] * 3


def test_machine_create_args_without_probing(monkeypatch, tmp_path, log):
    """What `vmdock render` uses: the remembered answer, else the args that work
    without --privileged; nothing is run; file:// mirrors are mounted."""
    from vmdock.hostbuild import machine_image as mi

    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    assert mi.machine_create_args(log, probe=False) == mi.MACHINE_CREATE_ARGS
    hostfacts.write_fact("privileged", {"default": {"allowed": True}})
    assert mi.machine_create_args(log, probe=False) == mi.PRIVILEGED_CREATE_ARGS
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    args = mi.machine_create_args(log, mirrors=(f"file://{mirror}", None), probe=False)
    assert args == [*mi.PRIVILEGED_CREATE_ARGS, "-v", f"{mirror}:{mirror}:ro"]
    assert not log.path.exists(), "something was run"
