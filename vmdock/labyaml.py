"""YAML for files vmdock does not control: bounded, plain data only.

``load()`` reads one YAML document the way ``yaml.safe_load`` does, except
that nesting depth and the number of nodes are bounded while composing (so
neither 20,000 nested brackets nor "billion laughs" aliases get far), an
alias may not contain itself, keys are strings and unique, numbers are short,
and YAML 1.1's yes/no/on/off are strings.  libyaml parses when it is
installed; the pure-Python parser words syntax errors.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import yaml

PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")  # a key shown as written in messages

# What a lab.yaml may cost to read.
MAX_DEPTH = 64  # nesting levels, counting what aliases repeat
MAX_NODES = 20_000  # YAML nodes, counting what aliases repeat (shipped labs have < 500)
MAX_NUMBER_DIGITS = 64


class LimitError(yaml.MarkedYAMLError):
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

    def _limit(self, problem: str, mark) -> LimitError:
        return LimitError(None, None, f"{self._field}: {problem}" if self._field else problem, mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            return self._repeat(self.anchors[event.anchor], event, parent, index)
        if self._depth == 1:
            self._field = index.value if isinstance(index, yaml.ScalarNode) and PLAIN_KEY.match(index.value) else ""
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


def load(text: str):
    """The data of one YAML document; raises yaml.YAMLError (LimitError when over a bound)."""
    if _FastLabLoader is None:
        return yaml.load(text, Loader=_LabLoader)
    try:
        return yaml.load(text, Loader=_FastLabLoader)
    except (yaml.reader.ReaderError, yaml.scanner.ScannerError, yaml.parser.ParserError):
        return yaml.load(text, Loader=_LabLoader)  # says what and where in its own, clearer words
