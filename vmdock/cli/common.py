"""What every command module of the CLI shares: the app, the consoles, global options,
the progress display, and how a lab's strings are shown."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from .. import __version__
from ..errors import VmdockError
from ..events import Events
from ..labdirs import LAB_FILE, search_path
from ..settings import Settings
from ..settings import current as current_settings

if TYPE_CHECKING:
    from ..loader import LoadedLab

app = typer.Typer(
    no_args_is_help=True,
    help="Hands-on Docker labs (《Docker开发实践》) in virtual machines: `vmdock up LAB`, then `vmdock verify LAB`.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class _Opts:
    debug = False
    verbose = False
    labs_dirs: list[Path] = []
    remote_command: list[str] | None = None  # `vmdock ssh LAB -- CMD...`


OPTS = _Opts()


def complete_lab(ctx: typer.Context, incomplete: str) -> list[str]:
    """Lab names for shell completion: folder names on the search path, no lab.yaml parsed."""
    extra = ctx.find_root().params.get("labs_dir") or []
    names = {f.parent.name for d in search_path(list(extra)) if d.is_dir() for f in d.glob(f"*/{LAB_FILE}")}
    return sorted(n for n in names if n.startswith(incomplete))


def resolve_lab(name: str) -> LoadedLab:
    """The lab ``name`` names, on the search path of the command line.

    The loader (YAML, pydantic) is imported here, by the commands that load a lab: never by `vmdock list`.
    """
    from ..loader import resolve

    return resolve(name, OPTS.labs_dirs)


LabArg = typer.Argument(..., help="lab name (ch6-lamp), chapter (ch6) or number (6)", autocompletion=complete_lab)


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder text on screen
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: object, keep: str = "") -> str:
    """``text`` with every control character (but those in ``keep``) written as an escape: ``\\x1b``."""
    def show(m: re.Match) -> str:
        ch = m.group(0)
        return ch if ch in keep else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return _CONTROL.sub(show, str(text))


def to_json(data: object) -> str:
    """JSON for stdout: readable UTF-8, with control characters escaped (``\\u001b``) like any JSON encoder may."""
    text = json.dumps(data, indent=2, ensure_ascii=False)  # its only raw control character: the indent's newline
    return _CONTROL.sub(lambda m: "\n" if m.group(0) == "\n" else f"\\u{ord(m.group(0)):04x}", text) + "\n"


def shown(text: object, keep: str = "") -> str:
    """``visible`` and escaped for Rich markup: how a lab's string goes into console.print and tables."""
    return escape(visible(text, keep))


def _print_version(value: bool) -> None:
    # eager: without a command the group fails ("Missing command") before `_global` runs
    if value:
        console.print(f"vmdock {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    labs_dir: list[Path] | None = typer.Option(
        None, "--labs-dir", help="extra folder of lab folders (repeatable; also VMDOCK_LABS)"
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="stream command output"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    version: bool = typer.Option(
        False, "--version", help="print the version and exit", callback=_print_version, is_eager=True
    ),
):
    if version:
        console.print(f"vmdock {__version__}")
        raise typer.Exit(0)
    OPTS.debug, OPTS.verbose, OPTS.labs_dirs = debug, verbose, list(labs_dir or [])
    current_settings()  # every VMDOCK_* variable validated before any command runs


class RichEvents(Events):
    """Progress per machine and step, with elapsed time."""

    def __init__(self, verbose: bool, show_results: bool = True):
        self.verbose = verbose
        self.show_results = show_results  # off where a table follows (verify)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.tasks: dict[tuple, TaskID] = {}
        self.skipped = 0
        self._lock = threading.Lock()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def info(self, message):
        self.progress.console.print(f"[cyan]•[/] {shown(message)}")

    def task(self, name):
        with self._lock:
            self.tasks[("task", name)] = self.progress.add_task(f"[bold]{shown(name)}[/]", total=None)

    def task_done(self, name, seconds):
        with self._lock:
            task = self.tasks.pop(("task", name), None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.console.print(f"[green]✓[/] {shown(name)} [dim]{seconds:.1f}s[/]")

    def step_start(self, machine, key, title):
        with self._lock:
            self.tasks[(machine, key)] = self.progress.add_task(
                f"[magenta]{shown(machine)}[/] {shown(title)}", total=None
            )

    def _finish(self, machine, key):
        with self._lock:
            task = self.tasks.pop((machine, key), None)
        if task is not None:
            self.progress.remove_task(task)

    def step_done(self, machine, key, title, seconds, skipped):
        self._finish(machine, key)
        if not self.show_results:
            return
        if skipped:
            self.skipped += 1
            if self.verbose:
                self.progress.console.print(f"[dim]· {shown(machine)} {shown(title)} (done before)[/]")
            return
        self.progress.console.print(f"[green]✓[/] [magenta]{shown(machine)}[/] {shown(title)} [dim]{seconds:.1f}s[/]")

    def step_failed(self, machine, key, title, seconds):
        self._finish(machine, key)
        if not self.show_results:
            return
        self.progress.console.print(f"[red]✗[/] [magenta]{shown(machine)}[/] {shown(title)} [dim]{seconds:.1f}s[/]")

    def line(self, source, text):
        if self.verbose:
            self.progress.console.print(f"[dim]{shown(source)} |[/] {shown(text)}", highlight=False)


def make_engine(events: Events | None = None, provider: str | None = None, **settings):
    from ..engine import Engine

    return Engine(Settings.from_env(provider=provider, **settings), events or Events(), OPTS.labs_dirs)


def print_error(exc: VmdockError) -> None:
    headline = str(exc).splitlines()
    # soft_wrap: no line breaks at 80 columns in a pipe or CI log (`file: field: message` stays one line)
    err_console.print(f"[bold red]error:[/] {shown(headline[0])}", highlight=False, soft_wrap=True)
    for line in headline[1:]:
        err_console.print(f"  {shown(line)}", highlight=False, soft_wrap=True)
    for line in exc.details():
        err_console.print(f"  {shown(line)}", highlight=False, soft_wrap=True)
