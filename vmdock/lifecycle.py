"""A lab's lifecycle as data: its phases, the moves between them, the actions of `up`.

Test Kitchen's ``FSM.actions(last, desired)`` is the model: a lab remembers
the last phase it reached; ``actions`` says what `vmdock up` still has to do
to reach the one asked for, and ``advance`` refuses a move the table does not
allow (a bug, never the user's doing).
"""
from __future__ import annotations

from enum import Enum

from .errors import StateError


class Phase(str, Enum):
    NEW = "new"  # never brought up here
    RENDERED = "rendered"  # the Vagrantfile is written
    BOOTED = "booted"  # the machines run and answer SSH
    PROVISIONED = "provisioned"  # Docker, base image, files and the steps asked for are done
    HALTED = "halted"  # the machines are stopped, kept
    FAILED = "failed"  # the last command failed (state.last_error says where)
    DESTROYED = "destroyed"  # the machines are gone

    def __str__(self) -> str:
        return self.value


#: the actions of `vmdock up`, in order, and the phase each one reaches
ACTIONS: tuple[tuple[str, Phase], ...] = (
    ("render", Phase.RENDERED),
    ("boot", Phase.BOOTED),
    ("provision", Phase.PROVISIONED),
)

#: how many of ACTIONS a phase has behind it (halted and failed machines boot again;
#: provisioning then resumes from the last good step)
_DONE = {
    Phase.NEW: 0,
    Phase.DESTROYED: 0,
    Phase.RENDERED: 1,
    Phase.HALTED: 1,
    Phase.FAILED: 1,
    Phase.BOOTED: 2,
    Phase.PROVISIONED: 3,
}

_ANY = frozenset(Phase)
#: phase → the phases it may move to
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.NEW, Phase.RENDERED, Phase.FAILED, Phase.DESTROYED}),
    Phase.DESTROYED: frozenset({Phase.DESTROYED, Phase.RENDERED, Phase.FAILED}),
    Phase.RENDERED: frozenset({Phase.RENDERED, Phase.BOOTED, Phase.HALTED, Phase.FAILED, Phase.DESTROYED}),
    Phase.BOOTED: _ANY - {Phase.NEW},
    Phase.PROVISIONED: _ANY - {Phase.NEW},
    Phase.HALTED: _ANY - {Phase.NEW},
    Phase.FAILED: _ANY - {Phase.NEW},
}


def actions(last: Phase, desired: Phase = Phase.PROVISIONED) -> list[str]:
    """The actions of `up` that take a lab from ``last`` to ``desired``, in order."""
    have, want = _DONE[Phase(last)], _DONE[Phase(desired)]
    return [name for name, _ in ACTIONS[have:want]]


def advance(current: Phase, new: Phase) -> Phase:
    """``new`` when the table allows the move from ``current``; else a StateError."""
    current, new = Phase(current), Phase(new)
    if new not in TRANSITIONS[current]:
        raise StateError(f"a lab cannot go from {current} to {new}")
    return new
