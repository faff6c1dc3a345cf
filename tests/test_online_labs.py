"""The labs that need the outside world (offline: false): ch7-dlnnm, ch11-hadoop,
ch16-kubernetes, ch17-shipyard.

They cannot come up on an offline host, so this proves what can be proved here,
touching nothing but loopback:
- each loads and validates, and renders for the docker, virtualbox and libvirt providers;
- it declares exactly what it needs (`needs.images`, tagged, the same references its
  steps use), and its scripts are valid bash;
- `vmdock up LAB` with no mirror, no --images-dir and a closed registry probe stops at
  once with one message naming the missing images and both ways to provide them, with
  no traceback, and creates nothing (no machine container, no Vagrantfile);
- the preflight accepts an image from an --images-dir folder of `docker save`
  tarballs, and accepts anything when a registry mirror is set.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from vmdock import needs, paths
from vmdock.errors import MissingError
from vmdock.loader import resolve
from vmdock.model import CommandCheck
from vmdock.render import RenderOptions, machine_ips, render
from vmdock.settings import Settings

from .seating import SEAT_SUBNET, seat_of

ONLINE_LABS = ["ch7-dlnnm", "ch11-hadoop", "ch16-kubernetes", "ch17-shipyard"]
CLOSED_PROBE = "http://127.0.0.1:9/v2/"  # the discard port on loopback: nothing listens
ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _docker_usable() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


DOCKER = _docker_usable()


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No mirror, no images folder, a registry probe that cannot answer."""
    for name in ("VMDOCK_REGISTRY_MIRRORS", "VMDOCK_IMAGES_DIR", "VMDOCK_LABS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMDOCK_REGISTRY_PROBE", CLOSED_PROBE)
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    return tmp_path


# -- load, validate, declare ---------------------------------------------------------------

@pytest.mark.parametrize("name", ONLINE_LABS)
def test_loads_and_declares_its_images(name):
    loaded = resolve(name)
    lab = loaded.lab
    assert lab.name == name and loaded.folder == paths.LABS_DIR / name
    assert lab.offline is False
    assert lab.needs.images, "an online lab names the images it needs"
    for ref in lab.needs.images:
        last = ref.rsplit("/", 1)[-1]
        assert ":" in last and not ref.endswith(":latest"), f"{ref}: pin an exact tag"
    # the steps use exactly the declared references (through the lab's env)
    assert set(lab.needs.images) <= set(lab.env.values()), "each needed image is also in env: for the steps"
    # book naming: each step carries the book's section number and an English name
    for step in lab.steps:
        assert re.match(rf"^{lab.chapter}\.\d", step.name), step.name
        assert step.name_en
    assert lab.sections and all(s.startswith(f"{lab.chapter}.") for s in lab.sections)


@pytest.mark.parametrize("name", ONLINE_LABS)
def test_forwarded_ports_in_the_chapters_range(name):
    lab = resolve(name).lab
    low = 8000 + 10 * lab.chapter
    for m in lab.machines:
        for p in m.forwarded_ports:
            assert low <= p.host < low + 10, f"{m.name}: host port {p.host} outside {low}-{low + 9}"
            assert p.host_ip == "127.0.0.1"


@pytest.mark.parametrize("name", ONLINE_LABS)
@pytest.mark.parametrize("provider", ["docker", "virtualbox", "libvirt"])
def test_renders_for_every_provider(name, provider):
    loaded = resolve(name)
    opts = (
        RenderOptions("docker", {"machine_image": "vmdock/machine:test", "create_args": ["--privileged"]})
        if provider == "docker"
        else RenderOptions(provider, {"domain_type": "qemu"})
    )
    text = render(loaded, opts, seat_of(loaded))
    assert len(re.findall(r"\bconfig\.vm\.define\b", text)) == len(loaded.lab.machines)
    for m, ip in machine_ips(loaded, SEAT_SUBNET).items():
        assert re.search(rf'config\.vm\.define\s*\(?\s*"{m}"', text), m
        assert f'"{ip}"' in text
    for m in loaded.lab.machines:
        for p in m.forwarded_ports:
            assert re.search(rf"\bhost:\s*{p.host}\b", text), p
    if provider == "docker":
        assert f"vmdock.lab={name}" in text and '"vmdock/machine:test"' in text
    else:
        assert f'"{provider}"' in text


def _scripts(name):
    """(label, bash text) for every step, every command check and every .sh of the lab."""
    loaded = resolve(name)
    for step in loaded.lab.steps:
        yield f"step {step.name}", step.run
    for check in loaded.lab.checks:
        if isinstance(check, CommandCheck):
            yield f"check {check.name}", check.run
    for sh in sorted(loaded.folder.rglob("*.sh")):
        yield str(sh.relative_to(loaded.folder)), sh.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ONLINE_LABS)
def test_scripts_are_valid_bash(name):
    bad = []
    for label, text in _scripts(name):
        r = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        if r.returncode != 0:
            bad.append(f"{label}: {r.stderr.strip()}")
    assert not bad, "\n".join(bad)


def _code(text: str) -> str:
    """The text without its comment lines."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("name", ONLINE_LABS)
def test_images_are_pulled_only_when_absent(name):
    """Every step that needs an outside image goes through need-image.sh (inspect first)."""
    loaded = resolve(name)
    code = _code
    helper = code((loaded.folder / "need-image.sh").read_text(encoding="utf-8"))
    assert "docker image inspect" in helper and "docker pull" in helper
    assert helper.index("docker image inspect") < helper.index("docker pull")
    text = code("\n".join(s.run for s in loaded.lab.steps)) + "".join(
        code(p.read_text(encoding="utf-8")) for p in loaded.folder.rglob("*.sh") if p.name != "need-image.sh"
    )
    assert "docker pull" not in text, "pull only through need-image.sh"
    assert "need-image.sh" in text


def test_dlnnm_node_app():
    folder = paths.LABS_DIR / "ch7-dlnnm" / "web"
    lock = json.loads((folder / "package-lock.json").read_text(encoding="utf-8"))
    pkg = json.loads((folder / "package.json").read_text(encoding="utf-8"))
    assert set(pkg["dependencies"]) == {"mongodb"}
    assert lock["packages"]["node_modules/mongodb"]["version"].startswith("6.")
    if shutil.which("node"):
        r = subprocess.run(["node", "--check", str(folder / "server.js")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


# -- `vmdock up` refuses, fast, before creating anything ----------------------------------------

def _labelled_containers(name: str) -> set[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=vmdock.lab={name}"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.parametrize("name", ONLINE_LABS)
def test_up_refuses_fast_and_creates_nothing(name, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("VMDOCK_REGISTRY_MIRRORS", "VMDOCK_IMAGES_DIR", "VMDOCK_LABS", "VMDOCK_DEBUG")}
    env.update(VMDOCK_HOME=str(home), VMDOCK_PROVIDER="docker", VMDOCK_REGISTRY_PROBE=CLOSED_PROBE)
    before = _labelled_containers(name) if DOCKER else set()

    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "vmdock", "up", name],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    seconds = time.monotonic() - start
    err = ANSI.sub("", r.stderr).strip()
    flat = " ".join(err.split())

    assert r.returncode == MissingError.exit_status, (r.returncode, r.stdout, r.stderr)
    assert seconds < 30, f"took {seconds:.1f}s: the preflight must fail fast"
    assert "Traceback" not in r.stderr + r.stdout
    # one message: a headline naming every missing image, then its hint
    assert err.startswith(f"error: {name}: needs images"), err
    assert sum(1 for line in err.splitlines() if line.startswith("error:")) == 1
    for ref in resolve(name).lab.needs.images:
        assert ref in err.splitlines()[0], f"{ref} not named in the headline"
    assert "VMDOCK_REGISTRY_MIRRORS" in flat, "names the registry mirror setting"
    assert f"vmdock up {name} --images-dir" in flat and "docker save" in flat, "names --images-dir"

    # nothing was created
    lab_home = home / "labs" / name
    assert not (lab_home / "Vagrantfile").exists()
    assert not (lab_home / ".vagrant").exists()
    if DOCKER:
        assert _labelled_containers(name) - before == set(), "a machine container was created"


# -- the preflight accepts an --images-dir tarball, or a mirror ------------------------------------

def _fake_saved_image(path: Path, refs: list[str]) -> None:
    """A minimal `docker save` layout: manifest.json naming RepoTags, a config, a layer."""
    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as lt:
        add(lt, "hello.txt", b"vmdock test layer\n")
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    with tarfile.open(path, "w") as tar:
        add(tar, "layer/layer.tar", layer.getvalue())
        add(tar, "config.json", config.encode())
        manifest = [{"Config": "config.json", "RepoTags": refs, "Layers": ["layer/layer.tar"]}]
        add(tar, "manifest.json", json.dumps(manifest).encode())


def test_preflight_takes_an_images_dir_tarball(offline_env):
    lab = resolve("ch11-hadoop").lab
    assert lab.needs.images == ["apache/hadoop:3.3.6"], "this test relies on a lab that needs one image"
    folder = offline_env / "images"
    folder.mkdir()
    with pytest.raises(MissingError):  # empty folder, no mirror, closed probe
        needs.check(lab, Settings(images_dir=str(folder)))
    _fake_saved_image(folder / "hadoop.tar", ["docker.io/apache/hadoop:3.3.6"])  # a fully qualified tag matches too
    assert needs.check(lab, Settings(images_dir=str(folder))) == {"apache/hadoop:3.3.6": folder / "hadoop.tar"}


def test_preflight_names_only_what_the_folder_lacks(offline_env):
    lab = resolve("ch7-dlnnm").lab
    folder = offline_env / "images"
    folder.mkdir()
    _fake_saved_image(folder / "mongo.tar", ["mongo:7"])
    with pytest.raises(MissingError) as info:
        needs.check(lab, Settings(images_dir=str(folder)))
    assert "node:20-bookworm-slim" in info.value.message
    assert "mongo:7" not in info.value.message
    assert "--images-dir" in info.value.hint and "VMDOCK_REGISTRY_MIRRORS" in info.value.hint


@pytest.mark.parametrize("name", ONLINE_LABS)
def test_preflight_trusts_a_registry_mirror(offline_env, name):
    # with a mirror the images are pulled in the machines; nothing is contacted here
    assert needs.check(resolve(name).lab, Settings(registry_mirrors=("https://mirror.invalid",))) == {}


@pytest.mark.skipif(not DOCKER, reason="needs a usable docker CLI and daemon")
def test_preflight_takes_a_real_docker_save_tarball(offline_env):
    """`docker import` a tiny image under the needed tag, `docker save` it, check the folder."""
    ref = "apache/hadoop:3.3.6"
    folder = offline_env / "images"
    folder.mkdir()
    existed = subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0
    if not existed:
        rootfs = io.BytesIO()
        with tarfile.open(fileobj=rootfs, mode="w") as tar:
            data = b"a stand-in for the preflight test, never run\n"
            info = tarfile.TarInfo("README")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        r = subprocess.run(["docker", "import", "-", ref], input=rootfs.getvalue(), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
    try:
        r = subprocess.run(["docker", "save", "-o", str(folder / "hadoop.tar"), ref], capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        if not existed:  # leave the host's docker as it was
            subprocess.run(["docker", "rmi", ref], capture_output=True, timeout=120)
    assert needs.tarball_tags(folder / "hadoop.tar") == [ref]
    lab = resolve("ch11-hadoop").lab
    assert needs.check(lab, Settings(images_dir=str(folder))) == {ref: folder / "hadoop.tar"}
