"""One family of errors for everything below the CLI.

Every error carries what a user needs to act on it: which lab, which machine,
which step, the command that failed, its exit code, the tail of its stderr and
the log file with the whole story.  Only ``vmdock.cli`` turns them into
messages and exit codes.

Exit statuses (the table in README.md), one per kind of outcome so that a CI
job can tell a broken lab from a broken host:
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

EXIT_OK = 0  # every check passed (or the command did what it was asked)
EXIT_CHECK_FAILED = 1  # a check ran and failed
EXIT_BAD_INPUT = 2  # a lab file, a name, an option or a setting is wrong, or the command does not fit the lab's state
EXIT_INFRASTRUCTURE = 3  # Vagrant, SSH, Docker or the machines failed, or another vmdock holds the lab
EXIT_MISSING = 4  # the lab needs images (or other things from outside) that cannot be had
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


@dataclass
class VmdockError(Exception):
    message: str
    lab: str | None = None
    machine: str | None = None
    step: str | None = None
    command: str | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    log: Path | None = None
    hint: str | None = None

    exit_status: ClassVar[int] = EXIT_INFRASTRUCTURE

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:  # one line, what `vmdock` prints first
        where = "/".join(p for p in (self.lab, self.machine, self.step) if p)
        return f"{where}: {self.message}" if where else self.message

    def details(self) -> list[str]:
        """The lines printed under the headline."""
        out: list[str] = []
        if self.command:
            code = "" if self.exit_code is None else f" (exit {self.exit_code})"
            out.append(f"command: {self.command}{code}")
        if self.stderr_tail.strip():
            out.append("stderr (last lines):")
            out.extend("  " + line for line in self.stderr_tail.rstrip().splitlines())
        if self.hint:
            out.append(f"hint: {self.hint}")
        if self.log:
            out.append(f"log: {self.log}")
        return out

    def with_context(self, **kw) -> "VmdockError":
        """Fill in context that a lower layer did not know (never overwrites)."""
        for key, value in kw.items():
            if getattr(self, key, None) in (None, "") and value is not None:
                setattr(self, key, value)
        return self


class LabError(VmdockError):
    """A lab file is invalid or a lab name cannot be resolved."""

    exit_status = EXIT_BAD_INPUT

    def __str__(self) -> str:  # the message names the file already
        return self.message


class ConfigError(VmdockError):
    """A setting (environment variable, option) is invalid."""

    exit_status = EXIT_BAD_INPUT


class CommandError(VmdockError):
    """An external command (vagrant, docker, debootstrap, ssh) failed."""


class ProviderError(VmdockError):
    """No usable provider, or the requested one cannot work here."""


class BusyError(VmdockError):
    """Another vmdock process holds the lab (a passing condition, like a host problem: try again later)."""

    exit_status = EXIT_INFRASTRUCTURE


class ProvisionError(VmdockError):
    """A provisioning step failed inside a machine."""


class UnreachableError(ProvisionError):
    """A machine cannot be reached over SSH, or the connection was lost."""


class StateError(VmdockError):
    """The lab is not in a state that allows the command (not up, no such machine or check)."""

    exit_status = EXIT_BAD_INPUT


class MissingError(VmdockError):
    """A lab needs something from outside (images, a registry) that cannot be had."""

    exit_status = EXIT_MISSING


class BundleError(VmdockError):
    """A bundle file is damaged, truncated or of another format."""

    exit_status = 2


def tail(text: str | bytes, lines: int = 15) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])
