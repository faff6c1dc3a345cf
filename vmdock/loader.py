"""Find lab folders, load and validate ``lab.yaml``, resolve lab names.

A lab is a folder ``<labs dir>/<name>/`` holding ``lab.yaml`` and the files its
case needs.  Labs ship with vmdock; a teacher's own lab folders are found
through ``VMDOCK_LABS`` (colon-separated) or ``--labs-dir``.  Every error of a
file is reported at once, each as ``path/to/lab.yaml: field.path: message``.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import labyaml
from .errors import LabError
from .labdirs import LAB_FILE, Problem, chapter_order, each_lab, file_errors, has_lab_file, search_path
from .model import MAX_MACHINES, Lab, cross_ref_errors

_CHECK_TAGS = {"command", "http", "port", "container"}


@dataclass(frozen=True)
class LoadedLab:
    lab: Lab
    folder: Path

    @property
    def file(self) -> Path:
        return self.folder / LAB_FILE

    @property
    def name(self) -> str:
        return self.lab.name


MAX_FILE_BYTES = 1 << 20  # a lab.yaml is read whole: checked before reading
MAX_ERRORS = 50  # error lines shown for one file


def format_loc(loc: tuple) -> str:
    out = ""
    prev = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _CHECK_TAGS and out.startswith("checks"):
            pass  # pydantic names the union member; the user wrote `type:` already
        elif isinstance(part, str) and _UNION_MEMBER.match(part):
            pass  # pydantic's name of a union member (`list[constrained-str]`, `literal['all']`)
        else:
            out += ("." if out else "") + _key(part)
        prev = part
    return out or "(top level)"


def _key(part) -> str:
    """A key as written, or quoted and cut when it is not a plain name (an unknown key may be anything)."""
    text = str(part)
    if labyaml.PLAIN_KEY.match(text):
        return text
    return repr(text[:60] + "…" if len(text) > 60 else text)


_UNION_MEMBER = re.compile(r"^(?:list\[|literal\[|dict\[|function-)")  # pydantic's names of a union's members


def _messages(exc: ValidationError) -> list[str]:
    """One line per field; a union's alternatives are merged into one message."""
    by_loc: dict[str, list[str]] = {}
    literal_locs: set[str] = set()
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        loc = format_loc(tuple(err["loc"]))
        msg = msg.removeprefix("Value error, ")
        if err["type"] == "value_error" and not err["loc"]:
            lines.extend(msg.splitlines())  # cross-reference errors carry their own paths
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"type must be one of {', '.join(sorted(_CHECK_TAGS))}"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing `type` (one of {', '.join(sorted(_CHECK_TAGS))})"
        elif err["type"] == "too_long" and err.get("ctx"):
            msg = f"at most {err['ctx']['max_length']} items, not {err['ctx']['actual_length']}"
            if loc == "machines":
                msg = f"at most {MAX_MACHINES} machines fit a lab's network, not {err['ctx']['actual_length']}"
        if err["type"] == "literal_error":
            literal_locs.add(loc)
        if msg not in by_loc.setdefault(loc, []):
            by_loc[loc].append(msg)
    for loc, msgs in by_loc.items():
        # `on: [Bad]` fails both `list` (at on[0]) and `'all'` (at on): the deeper error is the useful one
        if loc in literal_locs and any(other.startswith((loc + "[", loc + ".")) for other in by_loc):
            msgs = [m for m in msgs if not m.startswith("Input should be ")] or msgs[:0]
            if not msgs:
                continue
        lines.append(f"{loc}: {' or '.join(msgs)}")
    return lines


def load_lab(folder: Path) -> LoadedLab:
    """Load one lab folder; raise LabError listing the problems of the file."""
    folder = Path(folder)
    file = folder / LAB_FILE
    shown = _display(file)
    raw = _parse(_read(folder, shown), shown, folder.name)
    if not isinstance(raw, dict):
        raise LabError(f"{shown}: (top level): must be a mapping of lab fields", lab=folder.name)

    errors = file_errors(raw, folder)
    lab = None
    try:
        lab = Lab.model_validate(raw)
    except ValidationError as exc:
        # pydantic skips the cross-reference check when a field is invalid: run it on the raw data
        errors = _messages(exc) + [e for e in cross_ref_errors(raw) if e not in errors] + errors
    if lab is not None and lab.name != folder.name:
        errors.insert(0, f"name: {lab.name!r} must equal the folder name {folder.name!r}")
    if errors:
        if len(errors) > MAX_ERRORS:
            errors = errors[:MAX_ERRORS] + [f"and {len(errors) - MAX_ERRORS} more errors"]
        raise LabError("\n".join(f"{shown}: {e}" for e in errors), lab=folder.name)
    assert lab is not None  # no errors: validated
    return LoadedLab(lab=lab, folder=folder.resolve())


def _read(folder: Path, shown: str) -> str:
    """The text of a lab.yaml: a regular file inside its folder, at most MAX_FILE_BYTES of UTF-8."""
    def refuse(why: str) -> LabError:
        return LabError(f"{shown}: {why}", lab=folder.name)

    real = os.path.realpath(folder / LAB_FILE)
    root = os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise refuse("is a link to a file outside the lab folder")
    try:
        # non-blocking: opening a FIFO must not wait for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise refuse("is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise refuse("is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise refuse(f"{info.st_size / 2**20:.1f} MiB is too large (at most {MAX_FILE_BYTES // 2**20} MiB)")
        data = b""
        while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise refuse(f"is too large (at most {MAX_FILE_BYTES // 2**20} MiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        where = f"{shown}:{line}:{column}"
        raise LabError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x})", lab=folder.name) from None


def _parse(text: str, shown: str, lab: str):
    try:
        return labyaml.load(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow in a file
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = f"character {chr(exc.character)!r} is not allowed"
        raise LabError(f"{shown}:{line}:{column}: invalid YAML: {problem}", lab=lab) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        what = "" if isinstance(exc, labyaml.LimitError) else "invalid YAML: "
        raise LabError(f"{shown}{where}: {what}{problem}", lab=lab) from None


def _display(file: Path) -> str:
    """The file as the user knows it: relative to the current folder when inside it, never a link's target."""
    folder = Path(os.path.realpath(file.parent))
    try:
        return str((folder / file.name).relative_to(Path.cwd()))
    except ValueError:
        return str(folder / file.name)


def discover(labs_dirs: list[Path] | None = None) -> tuple[list[LoadedLab], list[Problem]]:
    """Every lab on the search path; broken ones are returned as problems."""
    labs, problems = each_lab(labs_dirs, load_lab)
    return sorted(labs, key=lambda item: chapter_order(item.lab.chapter, item.name)), problems


_CH_RE = re.compile(r"^(?:ch)?(\d+)$", re.IGNORECASE)


def resolve(name: str, labs_dirs: list[Path] | None = None) -> LoadedLab:
    """A lab by full name (`ch6-lamp`), chapter (`ch6`) or number (`6`)."""
    # A full name is looked up directly so one broken lab elsewhere does not matter.
    if "/" not in name and name not in (".", ".."):
        for d in search_path(labs_dirs):
            if has_lab_file(d / name):
                return load_lab(d / name)
    labs, problems = discover(labs_dirs)
    m = _CH_RE.match(name.strip())
    if m:
        chapter = int(m.group(1))
        hits = [loaded for loaded in labs if loaded.lab.chapter == chapter]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise LabError(
                f"{name!r} matches several labs: {', '.join(h.name for h in hits)}; give the full name"
            )
        # a broken lab of that chapter: show its errors rather than "unknown"
        for p in problems:
            pm = re.match(r"^ch(\d+)(?:-|$)", p.folder.name)
            if pm and int(pm.group(1)) == chapter:
                raise p.error
    for p in problems:
        if p.folder.name == name:
            raise p.error
    known = ", ".join(loaded.name for loaded in labs) or "none"
    raise LabError(
        f"unknown lab {name!r} (labs: {known})", hint="see `vmdock list`; add folders with --labs-dir or VMDOCK_LABS"
    )


__all__ = ["LAB_FILE", "LoadedLab", "Problem", "discover", "load_lab", "resolve", "search_path"]
