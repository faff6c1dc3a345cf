"""Shared, generic fixtures for vmdock's tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmdock import paths


@pytest.fixture
def vmdock_home(tmp_path, monkeypatch) -> Path:
    """A private VMDOCK_HOME; VMDOCK_LABS unset so only what a test names is searched."""
    home = tmp_path / "vmdock-home"
    monkeypatch.setenv("VMDOCK_HOME", str(home))
    monkeypatch.delenv("VMDOCK_LABS", raising=False)
    return home


@pytest.fixture
def no_shipped_labs(tmp_path, monkeypatch) -> Path:
    """Hide the labs shipped in labs/ (they may be half-written) from discovery."""
    empty = tmp_path / "no-shipped-labs"
    empty.mkdir()
    monkeypatch.setattr(paths, "LABS_DIR", empty)
    return empty


# -- which shipped labs the end-to-end lab test brings up --------------------------

#: Brought up by the plain `python -m pytest` (CI): one per kind of case, kept under CI's time budget.
#: ch6-lamp is brought up by tests/test_classroom_e2e.py, which checks all this and its lab image,
#: reset and the offline bundle besides.
CI_LABS = ("ch2-containers",)
#: The multi-machine labs CI brings up from their lab images (tests/test_classroom_e2e.py);
#: ch18-swarm-compose, whose swarm takes up to two minutes to converge again, with --lab or --all-labs.
CI_IMAGE_LABS = ("ch10-registry",)


def pytest_addoption(parser):
    parser.addoption(
        "--all-labs",
        action="store_true",
        help="bring up every offline lab in tests/test_labs.py and every multi-machine lab from its lab images "
        "in tests/test_classroom_e2e.py, not only the CI set " + ", ".join(CI_LABS + CI_IMAGE_LABS),
    )
    parser.addoption("--lab", action="append", default=[], help="bring up only this lab (repeatable)")


def pytest_collection_modifyitems(config, items):
    """Deselect (never skip) the lab runs that were not asked for."""
    wanted = set(config.getoption("--lab"))
    if config.getoption("--all-labs") and not wanted:
        return
    keep, drop = [], []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        lab, ci = params.get("shipped_lab"), CI_LABS
        if not lab:
            lab, ci = params.get("image_lab"), CI_IMAGE_LABS
        if lab and lab not in (wanted or ci):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
