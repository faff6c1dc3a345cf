"""The labs `vmdock list` shows, without validating an unchanged lab again.

`vmdock list` needs a few fields of each lab (name, chapter, titles, machines,
offline).  Validating every lab.yaml (YAML and pydantic) costs more than the
rest of the command, so the summaries of the labs that validated are kept in
``<vmdock home>/lab-index.json``, each with what it was validated from:

* the lab.yaml (its real path, its folder's, size, mtime, ctime, inode,
  device): any edit, or another file in its place, changes these;
* the files its steps name, looked at again each time (a step file that is
  gone makes the lab broken, as loading it would);
* what judges a lab: vmdock's and pydantic's versions, and the stamps of
  vmdock's model, loader and YAML modules and of the box catalog.

Only labs that validated are kept: a broken lab is loaded every time, so its
errors are always those of now.  A lab.yaml changed in the last few seconds is
not kept (a second edit within the file system's timestamp tick could go
unseen).  An index that cannot be read, or is of another version or shape, is
ignored and written anew; it is written atomically, and not at all when the
home cannot be written.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic.version import VERSION as PYDANTIC_VERSION

from . import __version__, paths
from .hostbuild.fsutil import read_json, write_json_atomic
from .labdirs import LAB_FILE, Problem, chapter_order, each_lab, file_errors

INDEX_FILE = "lab-index.json"
INDEX_VERSION = 1
#: a lab.yaml younger than this is validated again next time
SETTLE_SECONDS = 2.0
#: what judges a lab, besides the lab's own files
_JUDGES = ("model.py", "loader.py", "labyaml.py", "labdirs.py", "labindex.py")


@dataclass(frozen=True)
class LabSummary:
    """What `vmdock list` shows of a lab that validated."""

    name: str
    chapter: int | None
    title: str
    title_en: str | None
    machines: tuple[str, ...]
    offline: bool
    folder: Path


def index_file() -> Path:
    return paths.vmdock_home() / INDEX_FILE


def summaries(labs_dirs: list[Path] | None = None) -> tuple[list[LabSummary], list[Problem]]:
    """Every lab on the search path, as `loader.discover` finds them, in the same order; broken ones as problems."""
    index = _Index(index_file())
    labs, problems = each_lab(labs_dirs, index.summary)
    for p in problems:
        index.forget(p.folder)
    index.save()
    return sorted(labs, key=lambda s: chapter_order(s.chapter, s.name)), problems


def _stamp(lab_file: Path) -> list[Any] | None:
    """What a lab.yaml was validated from (None: no such file)."""
    try:
        st = os.stat(lab_file)
    except OSError:
        return None
    return [os.path.realpath(lab_file), os.path.realpath(lab_file.parent),
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _judges() -> list[Any]:
    """vmdock's and pydantic's versions, and the stamps of the code and data that judge a lab."""
    files = [paths.PACKAGE_DIR / name for name in _JUDGES] + [paths.BOXES_DIR / "boxes.yaml"]
    return [__version__, PYDANTIC_VERSION, *(_stamp(f) for f in files)]


def _summary_of(data: Any, folder: Path) -> LabSummary | None:
    """The summary an index entry holds, when it has the right shape and names this folder's lab."""
    if not isinstance(data, dict):
        return None
    name, chapter, title, title_en = (data.get(k) for k in ("name", "chapter", "title", "title_en"))
    machines, offline, home = data.get("machines"), data.get("offline"), data.get("folder")
    if not (name == folder.name and (chapter is None or type(chapter) is int) and isinstance(title, str)
            and (title_en is None or isinstance(title_en, str)) and isinstance(machines, list)
            and all(isinstance(m, str) for m in machines) and type(offline) is bool and isinstance(home, str)):
        return None
    return LabSummary(name, chapter, title, title_en, tuple(machines), offline, Path(home))


class _Index:
    def __init__(self, file: Path):
        self.file = file
        self.judges = _judges()
        data = read_json(file)
        entries = data.get("labs") if data.get("version") == INDEX_VERSION and data.get("judges") == self.judges else {}
        self.entries: dict[str, Any] = entries if isinstance(entries, dict) else {}
        self.changed = self.entries != data.get("labs")

    def summary(self, folder: Path) -> LabSummary:
        """The lab in ``folder``: from the index when unchanged since it validated, else loaded (LabError)."""
        stamp = _stamp(folder / LAB_FILE)
        entry = self.entries.get(str(folder))
        if stamp is not None and isinstance(entry, dict) and entry.get("stamp") == stamp:
            files = entry.get("files")
            found = _summary_of(entry.get("summary"), folder)
            if found and isinstance(files, list) and not file_errors({"steps": files}, folder):
                return found
        from .loader import load_lab

        loaded = load_lab(folder)
        lab = loaded.lab
        found = LabSummary(lab.name, lab.chapter, lab.title, lab.title_en, tuple(m.name for m in lab.machines),
                           lab.offline, loaded.folder)
        changed_ns = max(stamp[3], stamp[4]) if stamp is not None else None  # the later of mtime and ctime
        if changed_ns is not None and time.time() - changed_ns / 1e9 > SETTLE_SECONDS:
            data = {**asdict(found), "machines": list(found.machines), "folder": str(found.folder)}
            self.entries[str(folder)] = {"stamp": stamp, "files": [{"files": s.files} for s in lab.steps],
                                         "summary": data}
            self.changed = True
        return found

    def forget(self, folder: Path) -> None:
        self.changed |= self.entries.pop(str(folder), None) is not None

    def save(self) -> None:
        if not self.changed:
            return
        try:
            write_json_atomic(self.file, {"version": INDEX_VERSION, "judges": self.judges, "labs": self.entries})
        except OSError:
            pass  # a home that cannot be written: `vmdock list` validates every time
