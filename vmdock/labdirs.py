"""Where lab folders are: the search path, which folders hold a lab, and the files a lab's steps name.

Light on purpose (no YAML, no pydantic): `vmdock list` and shell completion
start here, and ``vmdock.loader`` loads what it finds.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from . import paths, settings
from .errors import LabError

LAB_FILE = "lab.yaml"


@dataclass(frozen=True)
class Problem:
    """A lab folder that could not be loaded (shown by `vmdock list`)."""

    folder: Path
    error: LabError


def search_path(labs_dirs: list[Path] | None = None) -> list[Path]:
    """Lab folders to search, first match wins: --labs-dir, VMDOCK_LABS, shipped labs."""
    dirs: list[Path] = [Path(d) for d in (labs_dirs or [])]
    dirs += list(settings.current().labs)
    dirs.append(paths.LABS_DIR)
    seen, out = set(), []
    for d in dirs:
        key = d.expanduser().resolve()
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def has_lab_file(folder: Path) -> bool:
    """Anything named lab.yaml makes a lab folder, so a broken one (a folder, a FIFO, a dangling link) is reported."""
    return os.path.lexists(folder / LAB_FILE)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


Found = TypeVar("Found", bound=_Named)


def each_lab(labs_dirs: list[Path] | None, load: Callable[[Path], Found]) -> tuple[list[Found], list[Problem]]:
    """``load`` of every lab folder on the search path, in its order; folders it refuses are problems.

    A lab that loaded hides later folders of its name (a teacher's lab overrides a shipped one).
    """
    found: dict[str, Found] = {}
    problems: list[Problem] = []
    for d in search_path(labs_dirs):
        if not d.is_dir():
            continue
        for folder in sorted(p for p in d.iterdir() if has_lab_file(p)):
            if folder.name in found:
                continue
            try:
                found[folder.name] = load(folder)
            except LabError as exc:
                problems.append(Problem(folder, exc))
    return list(found.values()), problems


def chapter_order(chapter: int | None, name: str) -> tuple[bool, int, str]:
    """How labs are listed: by chapter, labs without one last, then by name."""
    return chapter is None, chapter or 0, name


def file_errors(raw: object, folder: Path) -> list[str]:
    """Files named by steps (``raw``: the lab's data) must exist inside the lab folder."""
    errors: list[str] = []
    steps = raw.get("steps") if isinstance(raw, dict) else None
    if not isinstance(steps, list):
        return errors
    root = Path(os.path.realpath(folder))
    for i, step in enumerate(steps):
        files = step.get("files") if isinstance(step, dict) else None
        if not isinstance(files, list):
            continue
        for j, rel in enumerate(files):
            if not isinstance(rel, str) or not rel:
                continue
            target = Path(os.path.realpath(folder / rel))  # never raises, even on a symlink loop
            if target != root and root not in target.parents:
                errors.append(f"steps[{i}].files[{j}]: {rel!r} lies outside the lab folder")
            elif not target.exists():
                errors.append(f"steps[{i}].files[{j}]: {rel!r} does not exist in {folder}")
    return errors
