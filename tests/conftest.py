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
