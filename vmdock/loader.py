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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import paths
from .errors import LabError
from .model import MAX_MACHINES, Lab, cross_ref_errors

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


# A lab folder is input vmdock does not control: what a lab.yaml may cost to read.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64  # nesting levels, counting what aliases repeat
MAX_NODES = 20_000  # YAML nodes, counting what aliases repeat (shipped labs have < 500)
MAX_NUMBER_DIGITS = 64
MAX_ERRORS = 50  # error lines shown for one file


class _LimitError(yaml.MarkedYAMLError):
    """A lab.yaml that is valid YAML but too big or too deep to read."""


class _Bounded(yaml.composer.Composer, yaml.constructor.SafeConstructor):
    """What makes a safe YAML loader fit for files vmdock does not control.

    Bounds nesting depth and the number of nodes while composing (so neither
    deep nesting nor "billion laughs" aliases get far), refuses aliases that
    contain themselves, keys that are not strings and duplicate keys.  Mixed
    into a loader before its parser.
    """

    peek_event: Callable[[], yaml.Event]  # from the parser it is mixed with

    def _start_bounds(self) -> None:
        self._depth = 0  # of the node being composed
        self._reach = 0  # deepest level reached inside it
        self._nodes = 0  # composed so far, an alias counting as the nodes it repeats
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, levels)
        self._field = ""  # the top-level key whose value is being composed

    def _limit(self, problem: str, mark) -> _LimitError:
        return _LimitError(None, None, f"{self._field}: {problem}" if self._field else problem, mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            return self._repeat(self.anchors[event.anchor], event, parent, index)
        if self._depth == 1:
            self._field = index.value if isinstance(index, yaml.ScalarNode) and _PLAIN_KEY.match(index.value) else ""
        if self._depth >= MAX_DEPTH:
            raise self._limit(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise self._limit(f"more than {MAX_NODES} YAML nodes", event.start_mark)
        before, outer_reach = self._nodes, self._reach
        self._depth += 1
        self._reach = self._depth
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._measured[id(node)] = (self._nodes - before + 1, self._reach - self._depth)
        self._reach = max(outer_reach, self._reach)
        return node

    def _repeat(self, node, event, parent, index):
        """An alias: as costly as the node it repeats, which must be complete."""
        if id(node) not in self._measured:
            raise self._limit(f"alias *{event.anchor} refers to a node that contains it", event.start_mark)
        nodes, levels = self._measured[id(node)]
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise self._limit(f"more than {MAX_NODES} YAML nodes once aliases are expanded", event.start_mark)
        if self._depth + levels > MAX_DEPTH:
            raise self._limit(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", event.start_mark)
        self._reach = max(self._reach, self._depth + levels)
        return super().compose_node(parent, index)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. `2026-13-45` read as a date
            raise yaml.constructor.ConstructorError(None, None, f"{node.value!r:.80}: {exc}", node.start_mark) from None


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults`: merged keys may be overridden
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"a {key_node.id} as a key is not allowed", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r:.40} is not a string (quote it)", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r:.80}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


def _construct_int(loader, node):
    # `1:2:3` is a base-60 integer in YAML 1.1: a long one costs quadratic time
    if len(node.value) > MAX_NUMBER_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"number {node.value[:20]}… is longer than {MAX_NUMBER_DIGITS} characters", node.start_mark
        )
    return loader.construct_yaml_int(node)


class _LabLoader(_Bounded, yaml.SafeLoader):
    """The pure-Python loader: its error messages say most (``found character '\\t'…``)."""

    def __init__(self, stream):
        yaml.SafeLoader.__init__(self, stream)
        self._start_bounds()


_LabLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LabLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

# YAML 1.1 reads `on`, `off`, `yes`, `no` as booleans, so the key `on:` of steps
# and checks became True.  Booleans are only true/false here (as in YAML 1.2);
# pydantic still accepts yes/no/on/off as strings for boolean fields.
_LabLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LabLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_FastLabLoader: type | None = None
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastLabLoader(_Bounded, CParser, yaml.resolver.Resolver):  # type: ignore[no-redef]
        """libyaml scans and parses (40 times faster on a large file); composing stays bounded Python."""

        yaml_constructors = _LabLoader.yaml_constructors
        yaml_implicit_resolvers = _LabLoader.yaml_implicit_resolvers

        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._start_bounds()


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
    if _PLAIN_KEY.match(text):
        return text
    return repr(text[:60] + "…" if len(text) > 60 else text)


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
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


def _file_errors(raw: dict, folder: Path) -> list[str]:
    """Files named by steps must exist inside the lab folder."""
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


def load_lab(folder: Path) -> LoadedLab:
    """Load one lab folder; raise LabError listing the problems of the file."""
    folder = Path(folder)
    file = folder / LAB_FILE
    shown = _display(file)
    raw = _parse(_read(folder, shown), shown, folder.name)
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
        if _FastLabLoader is None:
            return yaml.load(text, Loader=_LabLoader)
        try:
            return yaml.load(text, Loader=_FastLabLoader)
        except (yaml.reader.ReaderError, yaml.scanner.ScannerError, yaml.parser.ParserError):
            return yaml.load(text, Loader=_LabLoader)  # says what and where in its own, clearer words
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow in a file
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = f"character {chr(exc.character)!r} is not allowed"
        raise LabError(f"{shown}:{line}:{column}: invalid YAML: {problem}", lab=lab) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        what = "" if isinstance(exc, _LimitError) else "invalid YAML: "
        raise LabError(f"{shown}{where}: {what}{problem}", lab=lab) from None


def _display(file: Path) -> str:
    """The file as the user knows it: relative to the current folder when inside it, never a link's target."""
    folder = Path(os.path.realpath(file.parent))
    try:
        return str((folder / file.name).relative_to(Path.cwd()))
    except ValueError:
        return str(folder / file.name)


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


def _has_lab_file(folder: Path) -> bool:
    """Anything named lab.yaml makes a lab folder, so a broken one (a folder, a FIFO, a dangling link) is reported."""
    return os.path.lexists(folder / LAB_FILE)


def discover(labs_dirs: list[Path] | None = None) -> tuple[list[LoadedLab], list[Problem]]:
    """Every lab on the search path; broken ones are returned as problems."""
    labs: dict[str, LoadedLab] = {}
    problems: list[Problem] = []
    for d in search_path(labs_dirs):
        if not d.is_dir():
            continue
        for folder in sorted(p for p in d.iterdir() if _has_lab_file(p)):
            if folder.name in labs:
                continue  # an earlier folder on the path overrides a shipped lab
            try:
                labs[folder.name] = load_lab(folder)
            except LabError as exc:
                problems.append(Problem(folder, exc))
    ordered = sorted(labs.values(), key=lambda item: (item.lab.chapter, item.name))
    return ordered, problems


_CH_RE = re.compile(r"^(?:ch)?(\d+)$", re.IGNORECASE)


def resolve(name: str, labs_dirs: list[Path] | None = None) -> LoadedLab:
    """A lab by full name (`ch6-lamp`), chapter (`ch6`) or number (`6`)."""
    # A full name is looked up directly so one broken lab elsewhere does not matter.
    if "/" not in name and name not in (".", ".."):
        for d in search_path(labs_dirs):
            if _has_lab_file(d / name):
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
