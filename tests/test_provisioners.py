"""The scripts vmdock runs as root inside every machine, and their templates.

Template tests are plain unit tests.  The ``e2e`` tests run the scripts for
real in a container standing in for a machine (a docker-provider machine: PID 1
is not systemd) started from ``debian:bookworm`` with enough privileges to run
its own dockerd.  They need a working ``docker`` on the host and the
``debian:bookworm`` image, imported when missing from /var/tmp/vmdock-dev/bookworm.tar
or else from vmdock's own cached rootfs (built from the Debian mirror if need be):
no Docker Hub.  Without a docker CLI or dockerd they are skipped, saying why.

Most e2e tests share one container and follow the order vmdock provisions a
machine in (apt-mirror, install-docker, start-docker, base-image).  Each test
first runs the earlier scripts, which are fast no-ops once done, so a single
test can also be run alone.  Two tests have a container of their own: one with
systemd as PID 1 (standing in for a VM), one whose nft iptables is broken on
purpose.  Containers are named vmdock-test-prov-PID-XXXXXX; those left by an
interrupted run (whose pytest PID is gone) are removed first.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import jinja2
import pytest

from vmdock.machine_setup import provisioner

ROOT = Path(__file__).resolve().parent.parent
PROVISIONERS = ROOT / "provisioners"
TEMPLATES = ROOT / "templates"
SCRIPTS = ["apt-mirror.sh", "install-docker.sh", "start-docker.sh", "base-image.sh"]

IMAGE = "debian:bookworm"
HOST_TARBALL = Path("/var/tmp/vmdock-dev/bookworm.tar")
PREFIX = "vmdock-test-prov-"
PID_LABEL = "vmdock.test.pid"
# What docker-provider machines get: enough to run a dockerd inside.
DIND_ARGS = [
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--device-cgroup-rule=a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", "/var/lib/docker",
]
# What a cloud VM image has before vmdock touches it.
VM_PACKAGES = "ca-certificates curl iproute2 iptables procps gnupg sudo"


# --------------------------------------------------------------------------- helpers

def render(name: str, **variables) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(name).render(**variables)


def run(cmd: list[str], *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


class Machine:
    """A container standing in for a vmdock machine."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.timings: dict[str, float] = {}

    def sh(self, script: str, *, env: dict[str, str] | None = None, check: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = ["docker", "exec"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        cmd += [self.name, "bash", "-c", script]
        return run(cmd, check=check, timeout=timeout)

    def script(self, name: str, *, env: dict[str, str] | None = None, check: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a provisioner the way vmdock's Transport.run_script does: the
        environment as `export` lines in front of the script, the whole run
        with `sudo -n bash -euo pipefail FILE` (Debian's sudo has use_pty)."""
        lines = ["# written by the test"] + [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
        body = "\n".join(lines) + "\n" + provisioner(name)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"run-{name}"
            local.write_text(body)
            self.put(local, f"/tmp/vmdock/run-{name}")
        t0 = time.monotonic()
        proc = self.sh(f"sudo -n bash -euo pipefail /tmp/vmdock/run-{name}", check=check, timeout=timeout)
        proc.elapsed = time.monotonic() - t0  # type: ignore[attr-defined]
        print(f"[{self.name}] {name} {env or ''}: exit {proc.returncode} in {proc.elapsed:.1f} s")
        print(proc.stdout.rstrip())
        if proc.stderr.strip():
            print("stderr:", proc.stderr.rstrip())
        return proc

    def put(self, src: Path, dest: str) -> None:
        run(["docker", "cp", str(src), f"{self.name}:{dest}"])

    def put_text(self, text: str, dest: str, tmp_path: Path) -> None:
        local = tmp_path / Path(dest).name
        local.write_text(text)
        self.put(local, dest)

    def hold_lock(self, path: str, seconds: int) -> None:
        """Hold an fcntl write lock on `path` in the background, as a running
        apt-get/unattended-upgrades would (perl-base is in every Debian)."""
        perl = (
            "use Fcntl; open(my $f, '>>', $ARGV[0]) or die $!; "
            "my $l = pack('s s x4 q q i x4', F_WRLCK, 0, 0, 0, 0); fcntl($f, F_SETLKW, $l) or die $!; "
            "open(my $r, '>', '/tmp/lock-held'); close($r); sleep($ARGV[1]);"
        )
        self.sh(f"rm -f /tmp/lock-held; "
                f"setsid nohup perl -e {shlex.quote(perl)} {path} {seconds} >/dev/null 2>&1 </dev/null & "
                "for i in $(seq 1 50); do [ -e /tmp/lock-held ] && exit 0; sleep 0.1; done; exit 1")

    def upload_scripts(self) -> None:
        self.sh("mkdir -p /tmp/vmdock")
        for script in SCRIPTS:
            self.put(PROVISIONERS / script, f"/tmp/vmdock/{script}")

    # The provisioning steps, in vmdock's order; each a no-op once done.
    def docker_installed(self) -> None:
        self.script("install-docker.sh")

    def docker_started(self) -> None:
        self.docker_installed()
        self.script("start-docker.sh")


def _docker_ok() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on this host"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "dockerd does not answer on this host"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        run(["docker", "import", "--change", 'CMD ["bash"]', str(_host_tarball()), IMAGE])
    return None


def _host_tarball() -> Path:
    """A Debian rootfs tarball: a developer's own, else vmdock's cached rootfs (built from the
    Debian mirror when missing, as `vmdock up` does): the tests never depend on Docker Hub."""
    if HOST_TARBALL.is_file():
        return HOST_TARBALL
    from vmdock.hostbuild import rootfs
    from vmdock.runlog import Log

    return rootfs.rootfs_tarball(Log(Path(tempfile.gettempdir()) / "vmdock-test-rootfs.log"))


def _remove_stale_containers() -> None:
    """Containers of interrupted runs: ours by name, whose pytest is gone."""
    out = run(["docker", "ps", "-a", "--filter", f"name=^/{PREFIX}",
               "--format", f'{{{{.Names}}}} {{{{.Label "{PID_LABEL}"}}}}'], check=False).stdout
    for line in out.splitlines():
        name, _, pid = line.partition(" ")
        if pid.strip().isdigit() and Path(f"/proc/{pid.strip()}").exists():
            continue  # another test session that is still running
        run(["docker", "rm", "-f", "-v", name], check=False)


def _new_name() -> str:
    return f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _start_machine(name: str, image: str, *command: str, extra: tuple[str, ...] = ()) -> Machine:
    run(["docker", "run", "-d", "--name", name, "--label", f"{PID_LABEL}={os.getpid()}",
         *DIND_ARGS, *extra, image, *command])
    return Machine(name)


def _install_vm_packages(m: Machine, packages: str = VM_PACKAGES) -> None:
    m.sh(
        "export DEBIAN_FRONTEND=noninteractive; "
        f"apt-get install -y -q --no-install-recommends {packages} >/tmp/vm-packages.log 2>&1 "
        f"|| {{ apt-get update -q >>/tmp/vm-packages.log 2>&1 "
        f"&& apt-get install -y -q --no-install-recommends {packages} >>/tmp/vm-packages.log 2>&1; }}"
        " || { tail -n 20 /tmp/vm-packages.log; exit 1; }",
        timeout=900,
    )


@pytest.fixture(scope="module")
def machine():
    """A docker-provider machine: PID 1 is tini, not systemd."""
    why = _docker_ok()
    if why:
        pytest.skip(why)
    _remove_stale_containers()
    name = _new_name()
    try:
        m = _start_machine(name, IMAGE, "sleep", "infinity", extra=("--init",))
        _install_vm_packages(m)
        m.upload_scripts()
        yield m
    finally:
        run(["docker", "rm", "-f", "-v", name], check=False, timeout=120)


@pytest.fixture(scope="module")
def systemd_machine():
    """Stands in for a VM: systemd is PID 1 (in a container, as far as this host allows)."""
    why = _docker_ok()
    if why:
        pytest.skip(why)
    _remove_stale_containers()
    image = f"vmdock-test/systemd-bookworm:{os.getpid()}"
    builder, name = _new_name(), _new_name()
    try:
        run(["docker", "run", "--name", builder, "--label", f"{PID_LABEL}={os.getpid()}", IMAGE, "bash", "-c",
             "export DEBIAN_FRONTEND=noninteractive; "
             f"pkgs='systemd systemd-sysv dbus {VM_PACKAGES}'; "
             "apt-get install -y -q --no-install-recommends $pkgs >/tmp/l 2>&1 "
             "|| { apt-get update -q >>/tmp/l 2>&1 "
             "&& apt-get install -y -q --no-install-recommends $pkgs >>/tmp/l 2>&1; } "
             "|| { tail -n 20 /tmp/l; exit 1; }"], timeout=900)
        run(["docker", "commit", builder, image])
        m = _start_machine(name, image, "/lib/systemd/systemd",
                           extra=("--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker"))
        booted = m.sh("for i in $(seq 1 120); do "
                      "case $(systemctl is-system-running --wait 2>/dev/null) in running|degraded) exit 0;; esac; "
                      "sleep 0.5; done; exit 1", check=False, timeout=180)
        if booted.returncode != 0:
            pytest.skip("systemd does not boot in a container on this host")
        m.upload_scripts()    # after boot: systemd-tmpfiles empties /tmp
        yield m
    finally:
        run(["docker", "rm", "-f", "-v", builder], check=False, timeout=120)
        run(["docker", "rm", "-f", "-v", name], check=False, timeout=120)
        run(["docker", "rmi", "-f", image], check=False, timeout=120)


# --------------------------------------------------------------------------- scripts, statically

@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_strict_bash_with_documented_env(script):
    path = PROVISIONERS / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(path, os.X_OK), f"{script} is not executable"
    run(["bash", "-n", str(path)])
    header = text.split("set -euo pipefail")[0]
    used = set(re.findall(r"\$\{?(VMDOCK_[A-Z0-9_]+)", text))
    assert used, script
    for var in used:
        assert var in header, f"{script}: {var} is used but not documented in the header"


# --------------------------------------------------------------------------- templates

HOSTILE = [
    'quote"inside',
    "back\\slash\\",
    "new\nline\r\n",
    "tab\tand\x00nul",
    "</script><!--&'",
    "unicode ✓ 镜像",
    '{"looks": "like json"}',
    "}], \"storage-driver\": \"evil",
]


def test_daemon_json_hostile_strings_stay_valid_json():
    out = render(
        "daemon.json.j2",
        registry_mirrors=HOSTILE,
        insecure_registries=list(reversed(HOSTILE)),
        storage_driver=HOSTILE[0],
        extra={h: h for h in HOSTILE} | {"nested": {"list": HOSTILE, "n": 1, "b": False, "none": None}},
    )
    data = json.loads(out)
    assert data["registry-mirrors"] == HOSTILE
    assert data["insecure-registries"] == list(reversed(HOSTILE))
    assert data["storage-driver"] == HOSTILE[0]
    for h in HOSTILE:
        assert data[h] == h
    assert data["nested"] == {"list": HOSTILE, "n": 1, "b": False, "none": None}


def test_daemon_json_defaults_and_extra_override():
    assert json.loads(render("daemon.json.j2")) == {"registry-mirrors": [], "insecure-registries": []}
    assert json.loads(render("daemon.json.j2", registry_mirrors=None, insecure_registries=None,
                             storage_driver=None, extra=None)) == {
        "registry-mirrors": [], "insecure-registries": []}
    data = json.loads(render(
        "daemon.json.j2",
        registry_mirrors=("https://m1.example", "https://m2.example"),
        insecure_registries=["10.0.0.5:5000"],
        storage_driver="vfs",
        extra={"registry-mirrors": ["https://override.example"], "debug": True,
               "log-opts": {"max-size": "10m"}},
    ))
    assert data == {
        "registry-mirrors": ["https://override.example"],
        "insecure-registries": ["10.0.0.5:5000"],
        "storage-driver": "vfs",
        "debug": True,
        "log-opts": {"max-size": "10m"},
    }


def test_daemon_json_works_in_an_immutable_sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    out = env.get_template("daemon.json.j2").render(insecure_registries=["a&b<c>'"], extra={"x": "y"})
    assert json.loads(out) == {"registry-mirrors": [], "insecure-registries": ["a&b<c>'"], "x": "y"}


def _stanzas(text: str) -> list[dict[str, str]]:
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        fields = {}
        for line in para.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields:
            out.append(fields)
    return out


def test_debian_sources_template():
    text = render("debian.sources.j2", mirror="https://mirrors.example.invalid/debian",
                  suite="bookworm", security_mirror="")
    assert _stanzas(text) == [{
        "Types": "deb",
        "URIs": "https://mirrors.example.invalid/debian",
        "Suites": "bookworm bookworm-updates",
        "Components": "main",
        "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg",
    }]
    text = render("debian.sources.j2", mirror="https://m.example.invalid/debian", suite="trixie",
                  security_mirror="https://s.example.invalid/debian-security")
    stanzas = _stanzas(text)
    assert [s["URIs"] for s in stanzas] == ["https://m.example.invalid/debian",
                                            "https://s.example.invalid/debian-security"]
    assert [s["Suites"] for s in stanzas] == ["trixie trixie-updates", "trixie-security"]
    text = render("debian.sources.j2", mirror="http://m/debian", suite="bookworm", security_mirror=None,
                  suites=["bookworm", "bookworm-updates", "bookworm-backports"],
                  components="main contrib")
    assert _stanzas(text)[0]["Suites"] == "bookworm bookworm-updates bookworm-backports"
    assert _stanzas(text)[0]["Components"] == "main contrib"


# --------------------------------------------------------------------------- in a machine

@pytest.mark.e2e
def test_apt_mirror(machine, tmp_path):
    conf = machine.sh("cat /etc/apt/sources.list; ls /etc/apt/sources.list.d/").stdout
    assert "deb.debian.org/debian" in conf

    # 1. a fake mirror, from the rendered template, without running apt
    fake = "https://mirrors.example.invalid/debian"
    machine.put_text(render("debian.sources.j2", mirror=fake, suite="bookworm", security_mirror=""),
                     "/tmp/vmdock/debian.sources", tmp_path)
    proc = machine.script("apt-mirror.sh", env={"VMDOCK_APT_MIRROR": fake, "VMDOCK_APT_UPDATE": "0"})
    assert "now come from " + fake in proc.stdout
    sources = machine.sh("cat /etc/apt/sources.list.d/debian.sources").stdout
    assert f"URIs: {fake}" in sources and "Suites: bookworm bookworm-updates" in sources
    listing = machine.sh("cat /etc/apt/sources.list").stdout
    assert not re.search(r"^deb ", listing, re.M), listing          # Debian lines commented out
    assert "#vmdock# deb http://deb.debian.org/debian bookworm main" in listing
    original = machine.sh("cat /etc/apt/sources.list.vmdock-orig").stdout
    assert original.startswith("deb http://deb.debian.org/debian bookworm")
    uris = machine.sh("apt-get update --print-uris").stdout        # what apt would fetch, fetching nothing
    assert "'https://mirrors.example.invalid/debian/dists/bookworm/InRelease'" in uris
    assert "'https://mirrors.example.invalid/debian/dists/bookworm-updates/InRelease'" in uris
    assert "deb.debian.org" not in uris, uris
    aptconf = machine.sh("apt-config dump").stdout
    assert 'APT::Install-Recommends "false"' in aptconf
    assert 'Acquire::Retries "5"' in aptconf

    # 2. the real mirror (deb.debian.org itself) from the same starting point, with apt-get update
    real = "http://deb.debian.org/debian"
    stale = machine.script("apt-mirror.sh", env={"VMDOCK_APT_MIRROR": real}, check=False)
    assert stale.returncode == 1 and "rendered for another mirror" in stale.stderr   # still the fake's file
    machine.put_text(render("debian.sources.j2", mirror=real, suite="bookworm", security_mirror=""),
                     "/tmp/vmdock/debian.sources", tmp_path)
    # ... while another apt holds the lists lock for a while (apt-daily at boot)
    machine.hold_lock("/var/lib/apt/lists/lock", 8)
    proc = machine.script("apt-mirror.sh", env={"VMDOCK_APT_MIRROR": real})
    assert "waiting for another apt process" in proc.stdout
    assert "apt-get update ok" in proc.stdout
    assert "mirrors.example.invalid" not in machine.sh("cat /etc/apt/sources.list.d/debian.sources").stdout
    assert "deb.debian.org/debian bookworm/main" in machine.sh("apt-cache policy").stdout

    # 3. again: nothing to do, no apt-get update
    proc = machine.script("apt-mirror.sh", env={"VMDOCK_APT_MIRROR": real})
    assert "nothing to do" in proc.stdout and "apt-get update" not in proc.stdout
    assert proc.elapsed < 5

    # 4. no mirror: sources left alone
    proc = machine.script("apt-mirror.sh")
    assert "sources left as they are" in proc.stdout


@pytest.mark.e2e
def test_install_docker(machine, tmp_path):
    # docker-ce path, with a stand-in for get.docker.com that installs nothing
    fake = tmp_path / "get-docker.sh"
    fake.write_text('#!/bin/sh\necho "$@" > /tmp/get-docker.args\necho fake get-docker ran\n')
    machine.put(fake, "/tmp/vmdock/fake-get-docker.sh")
    proc = machine.script("install-docker.sh", check=False, env={
        "VMDOCK_DOCKER_SOURCE": "docker-ce",
        "VMDOCK_DOCKER_CE_MIRROR": "Aliyun",
        "VMDOCK_GET_DOCKER_URL": "file:///tmp/vmdock/fake-get-docker.sh",
    })
    assert proc.returncode == 1
    assert "not on PATH" in proc.stderr
    assert machine.sh("cat /tmp/get-docker.args").stdout.strip() == "--mirror Aliyun"

    bad = machine.script("install-docker.sh", check=False, env={"VMDOCK_DOCKER_SOURCE": "snap"})
    assert bad.returncode == 1 and "must be 'debian' or 'docker-ce'" in bad.stderr

    # the distribution's docker.io, while something holds the dpkg lock for a while
    machine.hold_lock("/var/lib/dpkg/lock-frontend", 8)
    proc = machine.script("install-docker.sh")
    assert proc.elapsed > 6, "did not wait for the dpkg lock"
    assert "installed Docker version" in proc.stdout
    machine.timings["install-docker"] = proc.elapsed
    machine.sh("command -v docker && command -v dockerd && command -v iptables && command -v curl")
    assert machine.sh("test -e /usr/sbin/policy-rc.d", check=False).returncode != 0, "policy-rc.d left behind"
    assert machine.sh("dpkg-query -W -f='${Status}' docker.io").stdout == "install ok installed"

    again = machine.script("install-docker.sh")
    assert "already installed" in again.stdout
    assert again.elapsed < 5

    # the login user (who ran it with sudo) joins group docker, also when Docker was there already
    machine.sh("id reader >/dev/null 2>&1 || useradd -m reader")
    joined = machine.script("install-docker.sh", env={"SUDO_USER": "reader"})
    assert "added reader to group docker" in joined.stdout
    assert "docker" in machine.sh("id -nG reader").stdout.split()
    assert "added" not in machine.script("install-docker.sh", env={"SUDO_USER": "reader"}).stdout  # once


@pytest.mark.e2e
def test_start_docker_outlives_the_session(machine):
    machine.docker_installed()
    proc = machine.script("start-docker.sh", timeout=180)
    machine.timings["start-docker"] = proc.elapsed
    assert "dockerd ready" in proc.stdout or "already running" in proc.stdout

    # the exec that started it is gone; a new one still reaches the daemon
    time.sleep(1)
    info = machine.sh("docker info --format '{{.ServerVersion}} {{.Driver}}'").stdout
    assert re.match(r"\d+\.\d+", info), info
    # the supervisor leads its own session (no SIGHUP when SSH goes away)
    sup = machine.sh("pid=$(cat /var/run/vmdock-dockerd.pid); ps -o sid= -p $pid; echo $pid").stdout.split()
    assert sup[0] == sup[1]
    machine.sh("test -s /var/log/dockerd.log && test -s /var/run/docker.pid")

    again = machine.script("start-docker.sh")
    assert "already running" in again.stdout and again.elapsed < 5

    # dockerd dies: the supervisor brings it back
    machine.sh("kill -9 $(cat /var/run/docker.pid)")
    machine.sh("for i in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1")



@pytest.mark.e2e
def test_daemon_json_is_applied(machine, tmp_path):
    machine.docker_started()
    text = render("daemon.json.j2", insecure_registries=["10.99.0.1:5000"],
                  registry_mirrors=["https://registry-mirror.example.invalid"], extra={"debug": True})
    json.loads(text)
    machine.put_text(text, "/tmp/vmdock/daemon.json", tmp_path)
    env = {"VMDOCK_DAEMON_JSON": "/tmp/vmdock/daemon.json"}
    proc = machine.script("start-docker.sh", env=env, timeout=180)
    assert "installed /etc/docker/daemon.json" in proc.stdout
    assert "dockerd ready" in proc.stdout
    info = machine.sh("docker info").stdout
    assert "10.99.0.1:5000" in info
    assert "registry-mirror.example.invalid" in info
    assert "Debug Mode: true" in info

    again = machine.script("start-docker.sh", env=env)
    assert "up to date" in again.stdout and "already running" in again.stdout

    # an invalid daemon.json: clear error with the daemon's log, then a good one recovers
    machine.put_text("{not json", "/tmp/vmdock/bad.json", tmp_path)
    bad = machine.script("start-docker.sh", env={"VMDOCK_DAEMON_JSON": "/tmp/vmdock/bad.json",
                                                 "VMDOCK_DOCKER_TIMEOUT": "30"}, check=False, timeout=120)
    assert bad.returncode == 1
    assert "unable to configure the Docker daemon" in bad.stderr
    assert "last lines of the dockerd log" in bad.stderr
    good = machine.script("start-docker.sh", env=env, timeout=180)
    assert "dockerd ready" in good.stdout
    missing = machine.script("start-docker.sh", env={"VMDOCK_DAEMON_JSON": "/nonexistent.json"}, check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr


@pytest.fixture(scope="module")
def rootfs_tarball(tmp_path_factory) -> Path:
    return _host_tarball()


@pytest.mark.e2e
def test_base_image_from_tarball(machine, rootfs_tarball):
    machine.docker_started()
    missing = machine.script("base-image.sh", check=False, env={
        "VMDOCK_BASE_IMAGE": "vmdock-test/missing:1", "VMDOCK_BASE_TARBALL": "/tmp/vmdock/nope.tar"})
    assert missing.returncode == 1 and "no such file" in missing.stderr

    machine.put(rootfs_tarball, "/tmp/vmdock/rootfs.tar")
    proc = machine.script("base-image.sh", env={"VMDOCK_BASE_TARBALL": "/tmp/vmdock/rootfs.tar"})
    machine.timings["base-image (tarball)"] = proc.elapsed
    assert "loaded from tarball" in proc.stdout
    version = machine.sh("docker run --rm debian:bookworm cat /etc/debian_version").stdout.strip()
    assert re.fullmatch(r"12\.\d+", version), version
    assert machine.sh("docker image inspect -f '{{json .Config.Cmd}}' debian:bookworm").stdout.strip() == '["bash"]'
    # a lab container on the inner bridge reaches the network (NAT through the inner iptables)
    machine.sh("docker run --rm debian:bookworm getent hosts deb.debian.org")

    again = machine.script("base-image.sh", env={"VMDOCK_BASE_TARBALL": "/tmp/vmdock/rootfs.tar"})
    assert "already present" in again.stdout and again.elapsed < 5


@pytest.mark.e2e
def test_base_image_debootstrap(machine):
    machine.docker_started()
    # An image no registry has, so the pull fails wherever this runs and the
    # script falls back to building it.
    tag = "vmdock-test/bookworm:debootstrap"
    machine.sh(f"docker rmi -f {tag} >/dev/null 2>&1; rm -f /var/cache/vmdock/rootfs-bookworm.tar")
    env = {"VMDOCK_BASE_IMAGE": tag, "VMDOCK_BASE_PULL": "1", "VMDOCK_PULL_TIMEOUT": "20",
           "VMDOCK_APT_MIRROR": "http://deb.debian.org/debian", "VMDOCK_BASE_SUITE": "bookworm"}
    proc = machine.script("base-image.sh", env=env, timeout=900)
    machine.timings["base-image (debootstrap)"] = proc.elapsed
    assert "pulling" in proc.stdout and "building it instead" in proc.stdout
    assert "built with debootstrap" in proc.stdout
    version = machine.sh(f"docker run --rm {tag} cat /etc/debian_version").stdout.strip()
    assert re.fullmatch(r"12\.\d+", version), version
    machine.sh("tar tf /var/cache/vmdock/rootfs-bookworm.tar ./etc/debian_version")
    assert "deb.debian.org/debian" in machine.sh(f"docker run --rm {tag} cat /etc/apt/sources.list").stdout

    # the machine's own cache makes the next import quick, without a pull
    machine.sh(f"docker rmi {tag} >/dev/null")
    again = machine.script("base-image.sh", env={**env, "VMDOCK_BASE_PULL": "0"})
    assert "loaded from tarball" in again.stdout
    print("timings:", {k: round(v, 1) for k, v in machine.timings.items()})


@pytest.mark.e2e
def test_install_and_start_docker_under_systemd(systemd_machine, tmp_path):
    m = systemd_machine
    proc = m.script("install-docker.sh")
    assert "installed Docker version" in proc.stdout
    m.timings["install-docker (systemd)"] = proc.elapsed
    assert m.sh("test -e /usr/sbin/policy-rc.d", check=False).returncode != 0

    proc = m.script("start-docker.sh", timeout=180)
    assert "(systemd" in proc.stdout
    assert m.sh("systemctl is-enabled docker").stdout.strip() == "enabled"
    assert m.sh("systemctl is-active docker").stdout.strip() == "active"

    text = render("daemon.json.j2", insecure_registries=["10.98.0.1:5000"])
    m.put_text(text, "/tmp/vmdock/daemon.json", tmp_path)
    env = {"VMDOCK_DAEMON_JSON": "/tmp/vmdock/daemon.json"}
    proc = m.script("start-docker.sh", env=env, timeout=180)
    assert "restarting docker.service" in proc.stdout and "dockerd ready" in proc.stdout
    assert "10.98.0.1:5000" in m.sh("docker info").stdout
    again = m.script("start-docker.sh", env=env)
    assert "already running (systemd)" in again.stdout

    m.put_text("{not json", "/tmp/vmdock/bad.json", tmp_path)
    bad = m.script("start-docker.sh", env={"VMDOCK_DAEMON_JSON": "/tmp/vmdock/bad.json",
                                           "VMDOCK_DOCKER_TIMEOUT": "30"}, check=False, timeout=120)
    assert bad.returncode == 1
    assert "unable to configure the Docker daemon" in bad.stderr.splitlines()[-1]
    good = m.script("start-docker.sh", env=env, timeout=180)
    assert "dockerd ready" in good.stdout


@pytest.mark.e2e
def test_start_docker_switches_to_iptables_legacy_when_nft_fails(rootfs_tarball):
    """Where the nft backend does not work in the container, start-docker.sh
    moves iptables to the legacy backend (here nft works, so it is broken on purpose)."""
    why = _docker_ok()
    if why:
        pytest.skip(why)
    name = _new_name()
    try:
        m = _start_machine(name, IMAGE, "sleep", "infinity", extra=("--init",))
        _install_vm_packages(m)
        m.upload_scripts()
        m.script("install-docker.sh")
        m.sh("printf '#!/bin/sh\\necho nf_tables: not here >&2\\nexit 1\\n' >/usr/local/sbin/iptables-broken; "
             "chmod +x /usr/local/sbin/iptables-broken; "
             "update-alternatives --install /usr/sbin/iptables iptables /usr/local/sbin/iptables-broken 100 "
             ">/dev/null; "
             "update-alternatives --set iptables /usr/local/sbin/iptables-broken")
        assert m.sh("iptables -nL", check=False).returncode != 0
        proc = m.script("start-docker.sh", timeout=180)
        assert "switched to iptables-legacy" in proc.stdout
        assert "iptables=legacy" in proc.stdout
        assert "Value: /usr/sbin/iptables-legacy" in m.sh("update-alternatives --query iptables").stdout
        # dockerd's NAT works: a container resolves a name through the inner bridge
        m.put(rootfs_tarball, "/tmp/vmdock/rootfs.tar")
        m.script("base-image.sh", env={"VMDOCK_BASE_TARBALL": "/tmp/vmdock/rootfs.tar"})
        m.sh("docker run --rm debian:bookworm getent hosts deb.debian.org")
        assert "DOCKER" in m.sh("iptables-legacy -t nat -S").stdout
    finally:
        run(["docker", "rm", "-f", "-v", name], check=False, timeout=120)
