"""Find lab folders, load and validate ``lab.yaml``, resolve lab names.

A lab is a folder ``<labs dir>/<name>/`` holding ``lab.yaml`` and the files its
case needs.  Labs ship with vmdock; a teacher's own lab folders are found
through ``VMDOCK_LABS`` (colon-separated) or ``--labs-dir``.  Every error of a
file is reported at once, each as ``path/to/lab.yaml: field.path: message``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import paths
from .errors import LabError
from .model import Lab, cross_ref_errors

LAB_FILE = "lab.yaml"
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


@dataclass(frozen=True)
class Problem:
    """A lab folder that could not be loaded (shown by `vmdock list`)."""

    folder: Path
    error: LabError


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses duplicate keys instead of keeping the last."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 reads `on`, `off`, `yes`, `no` as booleans, so the key `on:` of steps
# and checks became True.  Booleans are only true/false here (as in YAML 1.2);
# pydantic still accepts yes/no/on/off as strings for boolean fields.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _FastUniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same rules over libyaml's parser (10x quicker: `vmdock list` reads every lab)."""


_FastUniqueKeyLoader.yaml_constructors = _UniqueKeyLoader.yaml_constructors
_FastUniqueKeyLoader.yaml_implicit_resolvers = _UniqueKeyLoader.yaml_implicit_resolvers


def format_loc(loc: tuple) -> str:
    out = ""
    prev = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _CHECK_TAGS and out.startswith("checks"):
            pass  # pydantic names the union member; the user wrote `type:` already
        elif isinstance(part, str) and ("[" in part or part.startswith("function-")):
            pass  # pydantic's name of a union member (`list[constrained-str]`, `literal['all']`)
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out or "(top level)"


def _messages(exc: ValidationError) -> list[str]:
    """One line per field; a union's alternatives are merged into one message."""
    by_loc: dict[str, list[str]] = {}
    literal_locs: set[str] = set()
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        loc = format_loc(tuple(err["loc"]))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "value_error" and not err["loc"]:
            lines.extend(msg.splitlines())  # cross-reference errors carry their own paths
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"type must be one of {', '.join(sorted(_CHECK_TAGS))}"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing `type` (one of {', '.join(sorted(_CHECK_TAGS))})"
        if err["type"] == "literal_error":
            literal_locs.add(loc)
        if msg not in by_loc.setdefault(loc, []):
            by_loc[loc].append(msg)
    for loc, msgs in by_loc.items():
        # `on: [Bad]` fails both `list` (at on[0]) and `'all'` (at on): the deeper error is the useful one
        if loc in literal_locs and any(other.startswith(loc + "[") or other.startswith(loc + ".") for other in by_loc):
            msgs = [m for m in msgs if not m.startswith("Input should be ")] or msgs[:0]
            if not msgs:
                continue
        lines.append(f"{loc}: {' or '.join(msgs)}")
    return lines


def _file_errors(raw: dict, folder: Path) -> list[str]:
    """Files named by steps must exist inside the lab folder."""
    errors = []
    steps = raw.get("steps") if isinstance(raw, dict) else None
    if not isinstance(steps, list):
        return errors
    root = folder.resolve()
    for i, step in enumerate(steps):
        files = step.get("files") if isinstance(step, dict) else None
        if not isinstance(files, list):
            continue
        for j, rel in enumerate(files):
            if not isinstance(rel, str) or not rel:
                continue
            target = (folder / rel).resolve()
            if target != root and root not in target.parents:
                errors.append(f"steps[{i}].files[{j}]: {rel!r} lies outside the lab folder")
            elif not target.exists():
                errors.append(f"steps[{i}].files[{j}]: {rel!r} does not exist in {folder}")
    return errors


def load_lab(folder: Path) -> LoadedLab:
    """Load one lab folder; raise LabError listing every problem of the file."""
    folder = Path(folder)
    file = folder / LAB_FILE
    shown = _display(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"{shown}: no such file", lab=folder.name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabError(f"{shown}: cannot read: {exc}", lab=folder.name) from None
    try:
        try:
            raw = yaml.load(text, Loader=_FastUniqueKeyLoader)
        except yaml.YAMLError:  # the pure-Python parser words its errors better
            raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise LabError(f"{shown}{where}: invalid YAML: {problem}", lab=folder.name) from None
    if not isinstance(raw, dict):
        raise LabError(f"{shown}: (top level): must be a mapping of lab fields", lab=folder.name)

    errors = _file_errors(raw, folder)
    lab = None
    try:
        lab = Lab.model_validate(raw)
    except ValidationError as exc:
        # pydantic skips the cross-reference check when a field is invalid: run it on the raw data
        errors = _messages(exc) + [e for e in cross_ref_errors(raw) if e not in errors] + errors
    if lab is not None and lab.name != folder.name:
        errors.insert(0, f"name: {lab.name!r} must equal the folder name {folder.name!r}")
    if errors:
        raise LabError(
            "\n".join(f"{shown}: {e}" for e in errors),
            lab=folder.name,
        )
    return LoadedLab(lab=lab, folder=folder.resolve())


def _display(file: Path) -> str:
    try:
        return str(file.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def search_path(labs_dirs: list[Path] | None = None) -> list[Path]:
    """Lab folders to search, first match wins: --labs-dir, VMDOCK_LABS, shipped labs."""
    dirs: list[Path] = [Path(d) for d in (labs_dirs or [])]
    env = os.environ.get("VMDOCK_LABS", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p.strip()]
    dirs.append(paths.LABS_DIR)
    seen, out = set(), []
    for d in dirs:
        key = d.expanduser().resolve()
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def discover(labs_dirs: list[Path] | None = None) -> tuple[list[LoadedLab], list[Problem]]:
    """Every lab on the search path; broken ones are returned as problems."""
    labs: dict[str, LoadedLab] = {}
    problems: list[Problem] = []
    for d in search_path(labs_dirs):
        if not d.is_dir():
            continue
        for folder in sorted(p for p in d.iterdir() if (p / LAB_FILE).is_file()):
            if folder.name in labs:
                continue  # an earlier folder on the path overrides a shipped lab
            try:
                labs[folder.name] = load_lab(folder)
            except LabError as exc:
                problems.append(Problem(folder, exc))
    ordered = sorted(labs.values(), key=lambda item: (item.lab.chapter is None, item.lab.chapter or 0, item.name))
    return ordered, problems


_CH_RE = re.compile(r"^(?:ch)?(\d+)$", re.IGNORECASE)


def resolve(name: str, labs_dirs: list[Path] | None = None) -> LoadedLab:
    """A lab by full name (`ch6-lamp`), chapter (`ch6`) or number (`6`)."""
    # A full name is looked up directly so one broken lab elsewhere does not matter.
    for d in search_path(labs_dirs):
        if (d / name / LAB_FILE).is_file():
            return load_lab(d / name)
    labs, problems = discover(labs_dirs)
    m = _CH_RE.match(name.strip())
    if m:
        chapter = int(m.group(1))
        hits = [l for l in labs if l.lab.chapter == chapter]
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
    known = ", ".join(l.name for l in labs) or "none"
    raise LabError(f"unknown lab {name!r} (labs: {known})", hint="see `vmdock list`; add folders with --labs-dir or VMDOCK_LABS")
