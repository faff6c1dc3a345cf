"""What the lower layers tell the CLI while they work (progress, never prints).

The CLI passes a subclass that draws rich progress; tests pass this no-op base
or a recorder.  (A lab's lifecycle phase is another thing: lifecycle.Phase.)
"""
from __future__ import annotations


class Events:
    def info(self, message: str) -> None:
        """A one-line notice (provider chosen and why, cache hits, …)."""

    def task(self, name: str) -> None:
        """A host-side task begins: 'machine image', 'machines', …"""

    def task_done(self, name: str, seconds: float) -> None:
        pass

    def step_start(self, machine: str, key: str, title: str) -> None:
        pass

    def step_done(self, machine: str, key: str, title: str, seconds: float, skipped: bool) -> None:
        pass

    def step_failed(self, machine: str, key: str, title: str, seconds: float) -> None:
        pass

    def line(self, source: str, text: str) -> None:
        """A line of command output (shown with -v)."""


class Recorder(Events):
    """Keeps every event; handy in tests and for --json summaries."""

    def __init__(self):
        self.events: list[tuple] = []

    def info(self, message):
        self.events.append(("info", message))

    def task(self, name):
        self.events.append(("task", name))

    def step_start(self, machine, key, title):
        self.events.append(("start", machine, key))

    def step_done(self, machine, key, title, seconds, skipped):
        self.events.append(("skip" if skipped else "done", machine, key))

    def step_failed(self, machine, key, title, seconds):
        self.events.append(("failed", machine, key))
