"""vmdock.settings: every VMDOCK_* variable in one validated model, where
each value came from, `vmdock config`, and the README's table."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from vmdock import cli, paths, settings
from vmdock.errors import ConfigError
from vmdock.hostbuild import mirror, rootfs
from vmdock.runlog import Log
from vmdock.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No VMDOCK_* variable of the caller leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("VMDOCK_"):
            monkeypatch.delenv(name)


def _error(**env) -> str:
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(ConfigError) as info:
            Settings.from_env()
        return info.value.message
    finally:
        mp.undo()


def test_readme_table_is_the_models():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- settings table: made by[^\n]*-->\n(.*?)<!-- end of settings table -->", text, re.DOTALL)
    assert m, "the README has no settings table between its markers"
    assert m.group(1) == settings.markdown_table(), "README out of date: paste `vmdock config --markdown`"
    for name in Settings.model_fields:
        assert f"`{settings.variable(name)}`" in m.group(1)


def test_no_vmdock_variable_is_read_outside_the_model():
    """Every VMDOCK_* the host's vmdock reads goes through vmdock/settings.py."""
    offenders = []
    for f in (REPO_ROOT / "vmdock").rglob("*.py"):
        if f.name == "settings.py":
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(environ(\.get)?|getenv)\s*[\[(]\s*f?[\"']VMDOCK_", line):
                offenders.append(f"{f.relative_to(REPO_ROOT)}:{i}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    "env, message",
    [
        ({"VMDOCK_APT_MIRROR": "ftp://x"}, "VMDOCK_APT_MIRROR: 'ftp://x' is not an http(s) or file URL"),
        ({"VMDOCK_APT_SECURITY_MIRROR": "deb.debian.org"}, "VMDOCK_APT_SECURITY_MIRROR: 'deb.debian.org' is not an http(s) or file URL"),
        ({"VMDOCK_APT_MIRROR": "file:///no/such/mirror"}, "VMDOCK_APT_MIRROR: 'file:///no/such/mirror': /no/such/mirror is not a folder on this host"),
        ({"VMDOCK_PROVIDER": "vmware"}, "VMDOCK_PROVIDER: 'vmware' is not one of virtualbox, libvirt, docker"),
        ({"VMDOCK_DOCKER_SOURCE": "snap"}, "VMDOCK_DOCKER_SOURCE: 'snap' must be 'debian' or 'docker-ce'"),
        ({"VMDOCK_DOCKER_CE_MIRROR": "http://x"}, "VMDOCK_DOCKER_CE_MIRROR: 'http://x' is not a get.docker.com mirror name (e.g. Aliyun, AzureChinaCloud)"),
        ({"VMDOCK_REGISTRY_MIRRORS": "https://ok.example, nope"}, "VMDOCK_REGISTRY_MIRRORS: 'nope' is not an http(s) URL"),
        ({"VMDOCK_INSECURE_REGISTRIES": "reg:5000,bad/path"}, "VMDOCK_INSECURE_REGISTRIES: 'bad/path' is not host[:port]"),
        ({"VMDOCK_LIBVIRT_DRIVER": "xen"}, "VMDOCK_LIBVIRT_DRIVER: 'xen' must be kvm or qemu"),
        ({"VMDOCK_PULL_BASE": "maybe"}, "VMDOCK_PULL_BASE: 'maybe': input should be a valid boolean"),
        ({"VMDOCK_CONNECT_TIMEOUT": "0"}, "VMDOCK_CONNECT_TIMEOUT: '0': input should be greater than 0"),
        ({"VMDOCK_REGISTRY_PROBE": "registry:5000"}, "VMDOCK_REGISTRY_PROBE: 'registry:5000' is not an http(s) URL"),
        ({"VMDOCK_GET_DOCKER_URL": "get.docker.com"}, "VMDOCK_GET_DOCKER_URL: 'get.docker.com' is not an http(s) or file URL"),
    ],
)
def test_errors_name_the_variable(env, message):
    assert _error(**env).startswith(message)


def test_two_bad_variables_are_both_named():
    text = _error(VMDOCK_PROVIDER="vmware", VMDOCK_APT_MIRROR="ftp://x")
    assert "VMDOCK_PROVIDER:" in text and "VMDOCK_APT_MIRROR:" in text


def test_an_option_is_named_as_an_option(monkeypatch):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(provider="vmware")
    assert info.value.message.startswith("--provider: 'vmware' is not one of")
    assert "VMDOCK_PROVIDER" in (info.value.hint or "")


def test_values_and_where_they_came_from(monkeypatch, tmp_path):
    monkeypatch.setenv("VMDOCK_APT_MIRROR", f"file://{tmp_path}/")
    monkeypatch.setenv("VMDOCK_REGISTRY_MIRRORS", "http://a:5000; https://b")
    monkeypatch.setenv("VMDOCK_LABS", f"{tmp_path}/x:{tmp_path}/y")
    monkeypatch.setenv("VMDOCK_PULL_BASE", "yes")
    monkeypatch.setenv("VMDOCK_PROVIDER", "libvirt")
    monkeypatch.setenv("VMDOCK_DOCKER_SOURCE", "")  # empty counts as unset
    monkeypatch.setenv("VMDOCK_BOX_URL_DEBIAN12", "file:///srv/d12.box")
    monkeypatch.setenv("VMDOCK_SECRET_REGISTRY_PASSWORD", "hunter2")
    s = Settings.from_env(provider="docker", images_dir=None)
    assert s.apt_mirror == f"file://{tmp_path}"
    assert s.registry_mirrors == ("http://a:5000", "https://b")
    assert s.labs == (tmp_path / "x", tmp_path / "y")
    assert s.pull_base is True and s.docker_source == "debian"
    assert s.provider == "docker"
    assert s.box_url("debian12") == "file:///srv/d12.box" and s.box_url("debian11") is None
    assert s.secret("REGISTRY_PASSWORD") == "hunter2"
    assert (s.origin("provider"), s.origin("apt_mirror"), s.origin("docker_source"), s.origin("images_dir")) == (
        "option", "environment", "default", "default")
    assert s.origin("box_urls") == "environment" and s.origin("secrets") == "environment"
    rows = {r["variable"]: r for r in settings.rows(s)}
    assert rows["VMDOCK_SECRET_<NAME>"]["value"] == {"REGISTRY_PASSWORD": "***"}
    assert rows["VMDOCK_PROVIDER"]["source"] == "option" and rows["VMDOCK_PROVIDER"]["option"] == "--provider"
    assert all(r["description"] for r in rows.values())


def test_current_reads_again_when_a_variable_changes(monkeypatch, tmp_path):
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "a"))
    first = settings.current()
    assert settings.current() is first
    assert paths.vmdock_home() == tmp_path / "a" and paths.cache_dir() == tmp_path / "a" / "cache"
    monkeypatch.setenv("VMDOCK_CACHE", str(tmp_path / "c"))
    assert settings.current() is not first
    assert paths.cache_dir() == tmp_path / "c"


def test_vmdock_config_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VMDOCK_SECRET_X", "s3cret")
    assert cli.main(["config", "--json", "--provider", "docker"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    rows = {r["variable"]: r for r in json.loads(out)}
    assert set(rows) == {settings.variable(n) for n in Settings.model_fields}
    assert rows["VMDOCK_HOME"] == {**rows["VMDOCK_HOME"], "value": str(tmp_path / "home"), "source": "environment"}
    assert rows["VMDOCK_CACHE"]["value"] == str(tmp_path / "home" / "cache") and rows["VMDOCK_CACHE"]["source"] == "default"
    assert rows["VMDOCK_PROVIDER"]["source"] == "option"


def test_every_command_refuses_a_bad_variable(monkeypatch, capsys):
    monkeypatch.setenv("VMDOCK_APT_MIRROR", "ftp://x")
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: VMDOCK_APT_MIRROR: 'ftp://x' is not an http(s) or file URL"
    assert "Traceback" not in err


# --------------------------------------------------------------------------
# file:// mirrors


def test_host_builds_take_a_file_mirror(monkeypatch, tmp_path):
    monkeypatch.setenv("VMDOCK_APT_MIRROR", f"file://{tmp_path}")
    assert rootfs.apt_mirror() == f"file://{tmp_path}"
    assert rootfs.apt_mirror(f"file://{tmp_path}/") == f"file://{tmp_path}"
    with pytest.raises(ConfigError, match="is not an http"):
        rootfs.apt_mirror("deb.debian.org/debian")


def test_file_mirror_is_served_to_the_build(tmp_path):
    (tmp_path / "dists" / "bookworm").mkdir(parents=True)
    (tmp_path / "dists" / "bookworm" / "Release").write_text("Suite: bookworm\n")
    log = Log(tmp_path / "log")
    with mirror.served(f"file://{tmp_path}", log) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        with urllib.request.urlopen(f"{url}/dists/bookworm/Release", timeout=5) as resp:
            assert resp.read() == b"Suite: bookworm\n"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/dists/bookworm/Release", timeout=2)
    with mirror.served("http://deb.debian.org/debian", log) as same:
        assert same == "http://deb.debian.org/debian"


def test_file_mirrors_are_mounted_into_docker_machines(tmp_path):
    assert mirror.mounts(f"file://{tmp_path}", None, "http://deb.debian.org/debian", f"file://{tmp_path}") == [
        "-v", f"{tmp_path}:{tmp_path}:ro"]


def test_virtual_machines_refuse_a_file_mirror(tmp_path):
    mirror.refuse_for_vms("libvirt", VMDOCK_APT_MIRROR="http://deb.debian.org/debian", VMDOCK_APT_SECURITY_MIRROR=None)
    with pytest.raises(ConfigError) as info:
        mirror.refuse_for_vms("libvirt", VMDOCK_APT_MIRROR=f"file://{tmp_path}")
    assert info.value.message == f"VMDOCK_APT_MIRROR: file://{tmp_path} is a folder of this host, which libvirt machines cannot read"
    assert "http.server" in (info.value.hint or "") and "docker provider" in (info.value.hint or "")
