"""vmdock.hostbuild (rootfs, machine image) against the real thing: debootstrap, dockerd, sshd, paramiko.

No mocks.  The rootfs tarball is cached in a fixed VMDOCK_HOME under
/var/tmp so debootstrap runs once per machine, not once per test run.  Every
container is named ``vmdock-test-images-*`` and removed (with its volumes)
afterwards; leftovers of an interrupted run are removed first.

Needs: root (debootstrap), dockerd, a reachable Debian mirror
($VMDOCK_APT_MIRROR or deb.debian.org), Vagrant's insecure private key
(Debian package ``vagrant``) and paramiko.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from vmdock import paths
from vmdock.errors import CommandError, ProviderError, VmdockError
from vmdock.hostbuild import machine_image as mi
from vmdock.hostbuild import rootfs
from vmdock.runlog import Log

paramiko = pytest.importorskip("paramiko")
# Connecting while sshd is still starting fails with a logged traceback.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

TEST_HOME = Path("/var/tmp/vmdock-test-home")
PREFIX = "vmdock-test-images-"
REPO_ROOT = Path(__file__).resolve().parent.parent
VAGRANT_KEYS = sorted(glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys"))
# An unreachable mirror: connection refused at once.
DEAD_MIRROR = "http://127.0.0.1:9/debian"


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _remove_containers(names_or_ids: list[str]) -> None:
    if names_or_ids:
        _docker("rm", "-f", "-v", *names_or_ids, check=False)


def _stale_containers() -> list[str]:
    out = _docker("ps", "-a", "--filter", f"name=^{PREFIX}", "--format", "{{.Names}}", check=False)
    return [n for n in out.stdout.split() if n.startswith(PREFIX)]


@pytest.fixture(scope="module", autouse=True)
def _environment():
    if os.geteuid() != 0:
        pytest.skip("these tests build a debootstrap rootfs: run them as root")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("dockerd is not reachable")
    _remove_containers(_stale_containers())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMDOCK_HOME", str(TEST_HOME))
        yield
    _remove_containers(_stale_containers())


@pytest.fixture
def log(tmp_path) -> Log:
    return Log(tmp_path / "vmdock.log")


@pytest.fixture(scope="module")
def module_log(tmp_path_factory) -> Log:
    return Log(tmp_path_factory.mktemp("images") / "vmdock.log")


@pytest.fixture(scope="module")
def machine_image(module_log) -> str:
    return mi.ensure_machine_image(module_log)


def _commands(log: Log, needle: str) -> list[str]:
    """Commands run so far whose start line contains ``needle``."""
    if not log.path.exists():
        return []
    return [
        line for line in log.path.read_text().splitlines()
        if line.startswith("[") and line.endswith("(started)") and needle in line
    ]


def _private_keys() -> list:
    keys = []
    for folder in VAGRANT_KEYS:
        for name in ("vagrant", "vagrant.key.rsa", "vagrant.key.ed25519"):
            path = Path(folder) / name
            if not path.is_file():
                continue
            for cls in (paramiko.Ed25519Key, paramiko.RSAKey):
                try:
                    keys.append(cls.from_private_key_file(str(path)))
                    break
                except paramiko.SSHException:
                    continue
    if not keys:
        pytest.skip("Vagrant's insecure private key is not installed (apt-get install vagrant)")
    return keys


class Machine:
    """A machine container started for a test; SSH to it through 127.0.0.1."""

    def __init__(self, image: str, create_args: list[str], suffix: str):
        self.name = f"{PREFIX}{suffix}-{os.getpid()}"
        _remove_containers([self.name])
        _docker("run", "-d", "--name", self.name, "-p", "127.0.0.1::22", *create_args, image)
        port = _docker("port", self.name, "22/tcp").stdout.split()[0].rsplit(":", 1)[1]
        self.port = int(port)

    def connect(self, user: str = "vagrant", pkey=None, timeout: float = 30, **kw) -> paramiko.SSHClient:
        deadline = time.monotonic() + timeout
        while True:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(
                    "127.0.0.1", port=self.port, username=user, pkey=pkey,
                    look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10,
                    **kw,
                )
                return client
            except (paramiko.SSHException, OSError) as exc:
                client.close()
                if isinstance(exc, paramiko.AuthenticationException) or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def remove(self) -> None:
        _remove_containers([self.name])


def ssh_run(client, command: str, timeout: float = 600) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    err = stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def ssh_ok(client, command: str, timeout: float = 600) -> str:
    code, out, err = ssh_run(client, command, timeout)
    assert code == 0, f"{command!r} exited {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    return out


# --------------------------------------------------------------------------
# the rootfs


def test_rootfs_is_a_clean_cached_minbase(module_log):
    started = time.monotonic()
    tarball = rootfs.rootfs_tarball(module_log)
    first = time.monotonic() - started
    assert tarball == paths.cache_dir() / f"rootfs-bookworm-{rootfs.debian_arch()}.tar.gz"
    assert str(tarball).startswith(str(TEST_HOME))
    assert not list(tarball.parent.glob(".rootfs-*")), "temporary build folders left behind"

    started = time.monotonic()
    assert rootfs.rootfs_tarball(module_log) == tarball
    assert time.monotonic() - started < 0.5
    meta = rootfs.rootfs_meta(tarball)
    assert meta["sha256"] and meta["size"] == tarball.stat().st_size
    assert meta.get("suite", "bookworm") == "bookworm"

    with tarfile.open(tarball) as tf:
        members = {m.name.lstrip("./"): m for m in tf.getmembers()}
        sources = tf.extractfile(members["etc/apt/sources.list"]).read().decode()
        os_release = tf.extractfile(members["usr/lib/os-release"]).read().decode()
    names = set(members)
    assert "bookworm" in sources and "deb " in sources
    assert 'VERSION_CODENAME=bookworm' in os_release
    for present in ("usr/bin/apt-get", "usr/bin/bash", "usr/bin/dpkg", "etc/passwd"):
        assert present in names, present
    # minbase, clean: no sshd, no downloaded .debs, no apt lists, no debootstrap leftovers
    assert "usr/sbin/sshd" not in names
    assert not [n for n in names if n.startswith("var/cache/apt/archives/") and n.endswith(".deb")]
    assert not [n for n in names if n.startswith("var/lib/apt/lists/") and n != "var/lib/apt/lists/partial"
                and not n.endswith("/lists")]
    assert not [n for n in names if n.startswith("debootstrap")]
    assert all(m.uid == 0 for n, m in members.items() if n.startswith("usr/bin/"))
    module_log.event(f"test: rootfs_tarball took {first:.1f}s")


def test_rootfs_build_failure_cleans_up_and_explains(tmp_path, monkeypatch, log):
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    with pytest.raises(CommandError) as info:
        rootfs.rootfs_tarball(log, mirror=DEAD_MIRROR)
    err = info.value
    assert "debootstrap" in (err.command or "")
    assert err.hint and DEAD_MIRROR in err.hint and "VMDOCK_APT_MIRROR" in err.hint
    assert err.log == log.path
    cache = paths.cache_dir()
    assert not list(cache.glob(".rootfs-*")), "the temporary rootfs was not removed"
    assert not list(cache.glob("rootfs-*.tar*"))
    assert _mounts_below(tmp_path) == []


def test_invalid_mirror_is_a_config_error(log):
    with pytest.raises(VmdockError) as info:
        rootfs.rootfs_tarball(log, mirror="deb.debian.org/debian")
    assert info.value.hint and "http" in info.value.hint


def test_rootfs_lock_waits_for_the_other_builder(tmp_path, monkeypatch, log):
    """While another process holds the lock and then produces the tarball,
    rootfs_tarball waits and uses it: no second debootstrap."""
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    target = rootfs.rootfs_path()
    target.parent.mkdir(parents=True)
    lock = target.parent / f"rootfs-bookworm-{rootfs.debian_arch()}.lock"
    holder = subprocess.Popen(
        ["flock", str(lock), "sh", "-c", f"echo locked; sleep 1.5; echo fake > {target}"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        # DEAD_MIRROR: were it to run debootstrap, it would fail.
        assert rootfs.rootfs_tarball(log, mirror=DEAD_MIRROR) == target
        assert time.monotonic() - started >= 1.0
    finally:
        holder.wait(10)
    text = log.path.read_text()
    assert "waiting for another vmdock process" in text
    assert not _commands(log, "debootstrap")


@pytest.mark.e2e
@pytest.mark.parametrize("whom", ["terminal", "vmdock-only"])
def test_rootfs_ctrl_c_removes_the_half_built_rootfs(tmp_path, whom):
    """Ctrl-C in debootstrap's second stage, when proc and sys are mounted in
    the target: nothing is left behind and nothing stays mounted.

    "terminal": the whole process group gets SIGINT (debootstrap's own exit
    trap unmounts).  "vmdock-only": only vmdock's process gets it, so run()
    SIGKILLs debootstrap and vmdock itself must unmount before deleting.
    """
    home = tmp_path / "home"
    log_path = tmp_path / "build.log"
    code = textwrap.dedent(
        f"""
        from vmdock.hostbuild import rootfs
        from vmdock.runlog import Log
        rootfs.rootfs_tarball(Log({str(log_path)!r}))
        """
    )
    env = dict(os.environ, VMDOCK_HOME=str(home), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        mounted: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            text = log_path.read_text() if log_path.exists() else ""
            # debootstrap may run in a mount namespace of its own: look with its eyes
            mounted = [m for pid in _processes_in(home) for m in _mounts_below(home, pid)]
            if "I: Installing core packages" in text and any(m.endswith("/proc") for m in mounted):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the build ended early: {proc.stderr.read()[-2000:]}"
        assert any(m.endswith("/proc") for m in mounted), mounted
        assert _processes_in(home)
        assert list((home / "cache").glob(".rootfs-*"))
        if whom == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert _mounts_below(home) == []
    assert _processes_in(home) == [], "debootstrap or its children survived"
    assert not list((home / "cache").glob(".rootfs-*"))
    assert not list((home / "cache").glob("rootfs-*.tar*"))


def _mounts_below(directory: Path, pid: int | str = "self") -> list[str]:
    try:
        with open(f"/proc/{pid}/mountinfo") as fh:
            return [line.split()[4] for line in fh if line.split()[4].startswith(str(directory))]
    except OSError:  # the process is gone
        return []


def _processes_in(directory: Path) -> list[int]:
    """Processes working on ``directory``: named in their command line, or
    chrooted below it (dpkg run by debootstrap)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            root = os.readlink(entry / "root")
        except OSError:
            continue
        if str(directory) in cmdline or root.startswith(str(directory)):
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------
# the machine image


TEST_REPO = "vmdock-test/machine"  # the tests' own images: never the one other tests and users run


def test_machine_image_builds_once_then_is_cached(log, monkeypatch):
    """(a) Built from the cached rootfs; a second call only inspects."""
    tarball = rootfs.rootfs_tarball(log)
    monkeypatch.setattr(mi, "MACHINE_IMAGE_REPO", TEST_REPO)
    mirror = rootfs.apt_mirror()
    tag = mi.machine_image_tag()
    _docker("rmi", tag, check=False)
    try:
        started = time.monotonic()
        assert mi.ensure_machine_image(log, mirror=mirror) == tag
        build_seconds = time.monotonic() - started
        assert len(_commands(log, "docker build")) == 1
        assert len(_commands(log, "docker import")) == 1
        assert not _commands(log, "debootstrap")
        assert tag.startswith(f"{TEST_REPO}:debian12-")

        before = len(_commands(log, "docker"))
        started = time.monotonic()
        assert mi.ensure_machine_image(log, mirror=mirror) == tag
        cached_seconds = time.monotonic() - started
        assert cached_seconds < 0.5, cached_seconds
        assert len(_commands(log, "docker build")) == 1, "the second call rebuilt"
        assert len(_commands(log, "docker")) == before + 1  # one docker image inspect

        inspect = json.loads(_docker("image", "inspect", tag).stdout)[0]
        labels = inspect["Config"]["Labels"]
        assert labels["vmdock.role"] == "machine-image"
        assert labels["vmdock.rootfs.sha256"] == rootfs.rootfs_meta(tarball)["sha256"]
        assert "container=docker" in inspect["Config"]["Env"]
        assert inspect["Config"]["Cmd"] == ["/usr/sbin/sshd", "-D", "-e"]
        assert "22/tcp" in inspect["Config"]["ExposedPorts"]
        # the intermediate import tag is gone
        leftovers = _docker("image", "ls", mi.ROOTFS_IMPORT_REPO, "--format", "{{.Tag}}").stdout
        assert f"-{os.getpid()}" not in leftovers
        log.event(f"test: machine image build {build_seconds:.1f}s, cached call {cached_seconds:.3f}s")
    finally:
        _docker("rmi", tag, check=False)


def test_machine_image_tag_is_pure(log):
    """The tag is known without building or running anything, and changes
    with what the image is built from."""
    tag = mi.machine_image_tag()
    assert re.fullmatch(r"vmdock/machine:debian12-[0-9a-f]{12}", tag)
    assert mi.machine_image_tag("bookworm") == tag
    assert mi.machine_image_tag("trixie").startswith("vmdock/machine:debian13-")
    # not the apt mirror: an image a teacher built serves a classroom with another mirror, or none
    for mirror in ("http://127.0.0.1:3142/debian", "http://127.0.0.1:9/debian"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VMDOCK_APT_MIRROR", mirror)
            assert mi.machine_image_tag() == tag
    assert not log.path.exists(), "computing the tag ran commands"


def test_a_new_home_reuses_the_machine_image(machine_image, tmp_path, monkeypatch, log):
    """Another vmdock home (and cache, no rootfs in it) gets the image this
    dockerd has: one `docker image inspect`, no debootstrap, no build."""
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VMDOCK_CACHE", raising=False)
    started = time.monotonic()
    assert mi.ensure_machine_image(log) == machine_image
    assert time.monotonic() - started < 2
    assert len(_commands(log, "")) == 1 and _commands(log, "docker image inspect")
    assert not rootfs.rootfs_path().exists()


def test_render_builds_nothing(tmp_path):
    """`vmdock render` in a new home with an empty cache: the Vagrantfile
    names the image `vmdock up` would use, and nothing was built or run."""
    env = dict(os.environ, VMDOCK_HOME=str(tmp_path / "home"), VMDOCK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO_ROOT))
    env.pop("VMDOCK_APT_MIRROR", None)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "vmdock", "render", "ch5-ssh", "--provider", "docker"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    vagrantfile = (tmp_path / "home" / "labs" / "ch5-ssh" / "Vagrantfile").read_text()
    assert f'"{mi.machine_image_tag()}"' in vagrantfile
    assert "--cap-drop=SYS_RESOURCE" in vagrantfile or "--privileged" in vagrantfile
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    log_text = "".join(p.read_text() for p in (tmp_path / "home").rglob("*.log"))
    # it may look at the host's networks (the lab's is chosen and leased), never make anything
    assert not re.search(r"\$ docker (build|run|create|import|commit|pull|load|network create)", log_text)
    assert "debootstrap" not in log_text
    assert seconds < 30, seconds


def test_machine_image_build_failure_leaves_nothing_behind(log, monkeypatch):
    """apt inside the build cannot reach the mirror: a CommandError that
    names the mirror, and neither the temporary import nor the images of the
    steps that worked stay behind."""
    rootfs.rootfs_tarball(log)  # cached: what fails is apt in the build
    monkeypatch.setattr(mi, "MACHINE_IMAGE_REPO", TEST_REPO)
    with pytest.raises(CommandError) as info:
        mi.ensure_machine_image(log, mirror=DEAD_MIRROR)
    err = info.value
    assert err.step == "machine-image"
    assert "docker build" in (err.command or "")
    assert err.hint and DEAD_MIRROR in err.hint
    assert err.stderr_tail.strip()
    tag = mi.machine_image_tag()
    assert not mi.image_exists(log, tag)
    text = log.path.read_text()
    step_ids = set(re.findall(r"^     ---> ([0-9a-f]{12})$", text, re.M))
    assert step_ids, "expected the legacy builder's step images in the log"
    for image_id in step_ids:
        assert _docker("image", "inspect", image_id, check=False).returncode != 0, image_id
    leftovers = _docker("image", "ls", mi.ROOTFS_IMPORT_REPO, "--format", "{{.Tag}}").stdout
    assert f"-{os.getpid()}" not in leftovers


def test_unreachable_dockerd_is_a_provider_error(log, monkeypatch, tmp_path):
    rootfs.rootfs_tarball(log)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ProviderError) as info:
        mi.ensure_machine_image(log)
    assert "dockerd is not reachable" in str(info.value)
    assert info.value.hint and "start" in info.value.hint


def test_machine_image_contents(machine_image):
    """What a fresh VM has, and no SSH host keys baked into the image."""
    script = (
        "set -e; for c in sshd sudo curl ip iptables ps gpg bash update-ca-certificates; do "
        "command -v $c >/dev/null || { echo missing $c; exit 1; }; done; "
        "getent passwd vagrant; cat /etc/sudoers.d/vagrant; "
        "stat -c '%a %U' /home/vagrant/.ssh /home/vagrant/.ssh/authorized_keys; "
        "cat /home/vagrant/.ssh/authorized_keys; ls /etc/ssh; "
        "/usr/sbin/sshd -T -f /etc/ssh/sshd_config -o HostKey=/dev/null 2>/dev/null | "
        "grep -Ei '^(passwordauthentication|usedns|usepam|permitrootlogin) ' || true; "
        "ls /var/lib/apt/lists"
    )
    out = _docker("run", "--rm", "--entrypoint", "sh", machine_image, "-c", script).stdout
    assert "vagrant:x:1000:1000::/home/vagrant:/bin/bash" in out
    assert "vagrant ALL=(ALL) NOPASSWD:ALL" in out
    assert "700 vagrant" in out and "600 vagrant" in out
    shipped = Path(REPO_ROOT / "templates/machine/vagrant-insecure.pub").read_text()
    for line in shipped.splitlines():
        if line and not line.startswith("#"):
            assert line in out
    for folder in VAGRANT_KEYS:  # the RSA key the installed Vagrant uses
        for pub in Path(folder).glob("*.pub*"):
            assert pub.read_text().strip() in out
    assert "ssh_host_" not in out, "host keys must be made per machine, not baked in"
    assert "sshd_config.d" in out


def test_machine_accepts_vagrant_over_ssh(machine_image, module_log):
    """(b) SSH as vagrant with the insecure key, passwordless sudo, no passwords."""
    keys = _private_keys()
    machine = Machine(machine_image, mi.machine_create_args(module_log), "ssh")
    other = None
    try:
        for key in keys:
            client = machine.connect(pkey=key)
            try:
                assert ssh_ok(client, "id -un").strip() == "vagrant"
                assert ssh_ok(client, "sudo -n true && sudo -n id -u").strip() == "0"
                assert ssh_ok(client, "echo $SHELL").strip() == "/bin/bash"
                # sshd drops it from sessions; systemd-detect-virt reads PID 1's
                assert "container=docker" in ssh_ok(client, "sudo -n cat /proc/1/environ").split("\0")
                host_key = client.get_transport().get_remote_server_key().get_base64()
            finally:
                client.close()
        with pytest.raises(paramiko.AuthenticationException):
            machine.connect(password="vagrant", timeout=5)
        with pytest.raises(paramiko.AuthenticationException):
            machine.connect(user="root", pkey=keys[0], timeout=5)
        # host keys are made per machine (like a cloud VM's first boot)
        other = Machine(machine_image, mi.machine_create_args(module_log), "ssh2")
        client = other.connect(pkey=keys[0])
        try:
            assert client.get_transport().get_remote_server_key().get_base64() != host_key
        finally:
            client.close()
    finally:
        machine.remove()
        if other:
            other.remove()
    assert machine.name not in _stale_containers()


def test_privileged_probe_is_cached(tmp_path, monkeypatch, machine_image, log):
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    allowed = mi.host_allows_privileged(log, image=machine_image)
    assert isinstance(allowed, bool)
    assert _commands(log, "--privileged")
    facts = json.loads((paths.cache_dir() / "host-facts.json").read_text())
    assert list(facts["privileged"].values())[0]["allowed"] is allowed
    before = len(_commands(log, "docker"))
    started = time.monotonic()
    args = mi.machine_create_args(log)
    assert time.monotonic() - started < 0.1
    assert len(_commands(log, "docker")) == before, "the answer was not cached"
    expected = mi.PRIVILEGED_CREATE_ARGS if allowed else mi.MACHINE_CREATE_ARGS
    assert args == expected
    if not allowed:
        assert "--cap-drop=SYS_RESOURCE" in args and "--privileged" not in args
    assert "--init" in args and "/var/lib/docker" in args


@pytest.mark.e2e
def test_docker_in_docker(machine_image, module_log):
    """(c) docker.io installed from the mirror inside a machine, its dockerd
    runs with machine_create_args(), and the rootfs tarball uploaded over
    SFTP becomes a base image there that runs containers."""
    key = _private_keys()[0]
    tarball = rootfs.rootfs_tarball(module_log)
    machine = Machine(machine_image, mi.machine_create_args(module_log), "dind")
    try:
        client = machine.connect(pkey=key)
        try:
            ssh_ok(
                client,
                "sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y -q --no-install-recommends docker.io",
                timeout=900,
            )
            ssh_ok(client, "sudo sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'")
            info = ssh_ok(
                client,
                "for i in $(seq 60); do sudo docker info >/dev/null 2>&1 && break; sleep 0.5; done; "
                "sudo docker info --format '{{.Driver}} {{.CgroupVersion}} {{.ServerVersion}}'",
                timeout=60,
            )
            driver = info.split()[0]
            assert driver == "overlay2", info

            sftp = client.open_sftp()
            try:
                sftp.put(str(tarball), "/tmp/rootfs.tar.gz")
            finally:
                sftp.close()
            ssh_ok(client, "sudo docker import /tmp/rootfs.tar.gz debian:bookworm", timeout=300)
            out = ssh_ok(
                client,
                "sudo docker run --rm -m 64m debian:bookworm sh -c "
                "'. /etc/os-release; echo $VERSION_CODENAME; "
                "test ! -e /usr/sbin/sshd && echo no-sshd'",
                timeout=120,
            )
            assert out.split() == ["bookworm", "no-sshd"]
        finally:
            client.close()
    finally:
        machine.remove()
    assert machine.name not in _stale_containers()


def test_remove_machine_images(module_log):
    """Removes every vmdock machine image on this dockerd (later tests rebuild it in seconds)."""
    others = _docker("ps", "-aq", "--filter", "label=vmdock.lab").stdout.split()
    assert not others, "lab machines are running on this dockerd: destroy them first (`vmdock status`)"
    tag = mi.ensure_machine_image(module_log)
    busy = f"{PREFIX}rmi-{os.getpid()}"
    try:
        _docker("run", "-d", "--name", busy, "--entrypoint", "sleep", tag, "600")
        with pytest.raises(CommandError) as info:
            mi.remove_machine_images(module_log)
        assert tag in str(info.value) and info.value.hint
        assert mi.image_exists(module_log, tag)
    finally:
        _remove_containers([busy])
    removed = mi.remove_machine_images(module_log)
    assert tag in removed
    assert not mi.image_exists(module_log, tag)
    assert mi.remove_machine_images(module_log) == []
