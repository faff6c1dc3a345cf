"""Every shipped lab, rendered for virtualbox and for libvirt, is accepted by real Vagrant.

`vagrant validate` runs in a temporary folder per lab and provider, with a
VAGRANT_HOME of its own (no boxes, no plugins of the user's).  For virtualbox
the provider's own checks are skipped (`--ignore-provider`: VirtualBox is not
installed here); for libvirt the vagrant-libvirt plugin checks its settings,
so it must be installed (`sudo bash scripts/host-setup.sh --libvirt`): those
tests carry the `libvirt` marker and, without the plugin, fail with one line
saying so (a failure, not a skip).

The validations run side by side in one module fixture (each `vagrant` start
costs a couple of seconds of Ruby); the tests only read their results.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from vmdock import paths
from vmdock.loader import load_lab
from vmdock.render import RenderOptions, render

from .seating import seat_of

LAB_FOLDERS = sorted(p.parent for p in paths.LABS_DIR.glob("*/lab.yaml"))
PROVIDERS = ("virtualbox", "libvirt")
NO_PLUGIN = "vagrant-libvirt is not installed: run scripts/host-setup.sh --libvirt"


def _plugin_installed() -> bool:
    out = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1"))
    return "vagrant-libvirt" in out.stdout


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """(lab folder name, provider) → (rendered Vagrantfile or load error, validate result or None)."""
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is not installed: run `sudo bash scripts/host-setup.sh`", pytrace=False)
    root = tmp_path_factory.mktemp("validate")
    vagrant_home = root / "vagrant-home"
    vagrant_home.mkdir()
    env = dict(os.environ, VAGRANT_HOME=str(vagrant_home), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    env.pop("VAGRANT_CWD", None)
    env.pop("VAGRANT_VAGRANTFILE", None)
    plugin = _plugin_installed()
    jobs = {}
    results = {}
    # render with a VAGRANT_HOME that has no vmdock-built box: the catalog's names
    saved = os.environ.get("VAGRANT_HOME")
    os.environ["VAGRANT_HOME"] = str(vagrant_home)
    try:
        for folder in LAB_FOLDERS:
            try:
                loaded = load_lab(folder)
            except Exception as exc:  # reported by the test of this lab
                for provider in PROVIDERS:
                    results[(folder.name, provider)] = (f"the lab does not load: {exc}", None)
                continue
            for provider in PROVIDERS:
                text = render(loaded, RenderOptions(provider, {"domain_type": "qemu"}), seat_of(loaded))
                where = root / f"{folder.name}-{provider}"
                where.mkdir()
                (where / "Vagrantfile").write_text(text, encoding="utf-8")
                results[(folder.name, provider)] = (text, None)
                if provider == "libvirt" and not plugin:
                    continue
                cmd = ["vagrant", "validate"] + (["--ignore-provider"] if provider == "virtualbox" else [])
                jobs[(folder.name, provider)] = (cmd, where)
    finally:
        if saved is None:
            os.environ.pop("VAGRANT_HOME", None)
        else:
            os.environ["VAGRANT_HOME"] = saved

    def run(item):
        key, (cmd, where) = item
        return key, subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for key, proc in pool.map(run, jobs.items()):
            results[key] = (results[key][0], proc)
    return {"results": results, "plugin": plugin}


def test_there_are_labs():
    assert LAB_FOLDERS, f"no labs under {paths.LABS_DIR}"


@pytest.mark.parametrize("provider", ["virtualbox", pytest.param("libvirt", marks=pytest.mark.libvirt)])
@pytest.mark.parametrize("lab", [f.name for f in LAB_FOLDERS])
def test_vagrant_accepts_the_rendered_vagrantfile(validated, lab, provider):
    if provider == "libvirt" and not validated["plugin"]:
        pytest.fail(NO_PLUGIN, pytrace=False)
    text, proc = validated["results"][(lab, provider)]
    if proc is None and text.startswith("the lab does not load"):
        pytest.fail(f"labs/{lab}: {text}", pytrace=False)
    assert proc.returncode == 0, (
        f"vagrant validate of labs/{lab} for {provider} failed:\n{proc.stdout}\n{proc.stderr}\n--- Vagrantfile:\n{text}"
    )
    assert "validated successfully" in proc.stdout
    if provider == "libvirt":
        assert 'lv.driver = "qemu"' in text and "lv.qemu_use_session = false" in text
