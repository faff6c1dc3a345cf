"""The command line: a thin typer layer over ``vmdock.engine``.

The only module that prints or exits.  Errors from below arrive as
``VmdockError``s and become one headline, a few detail lines (command, exit
code, stderr tail, log file) and an exit status (``vmdock.errors.EXIT_*``, the
table in README.md); ``--debug`` adds the traceback.

Every string that comes from a lab (titles, names, check output) goes through
``visible`` before it reaches the terminal: a title holding ``ESC ]0;…`` or
``ESC [2J`` shows as text and never drives the terminal.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, List, Optional

import typer

try:  # typer >= 0.2x vendors click (and does not install it): its exceptions are typer's own
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # older typer raises click's own
    from click import ClickException as _ClickException
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .providers import NAMES as PROVIDER_NAMES
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_INFRASTRUCTURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    LabError,
    VmdockError,
)
from .events import Events
from .loader import LAB_FILE, discover, resolve, search_path
from .model import Lab as LabModel
from .settings import Settings
from .settings import current as current_settings

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


def _complete_lab(ctx: typer.Context, incomplete: str) -> list[str]:
    """Lab names for shell completion: folder names on the search path, no lab.yaml parsed."""
    extra = ctx.find_root().params.get("labs_dir") or []
    names = {f.parent.name for d in search_path(list(extra)) if d.is_dir() for f in d.glob(f"*/{LAB_FILE}")}
    return sorted(n for n in names if n.startswith(incomplete))


LabArg = typer.Argument(..., help="lab name (ch6-lamp), chapter (ch6) or number (6)", autocompletion=_complete_lab)


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
    labs_dir: Optional[List[Path]] = typer.Option(None, "--labs-dir", help="extra folder of lab folders (repeatable; also VMDOCK_LABS)"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="stream command output"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    version: bool = typer.Option(False, "--version", help="print the version and exit", callback=_print_version, is_eager=True),
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
        self.tasks: dict[tuple, int] = {}
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
            self.tasks[(machine, key)] = self.progress.add_task(f"[magenta]{shown(machine)}[/] {shown(title)}", total=None)

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


def _engine(events: Events | None = None, provider: Optional[str] = None, **settings):
    from .engine import Engine

    return Engine(Settings.from_env(provider=provider, **settings), events or Events(), OPTS.labs_dirs)


# -- commands ------------------------------------------------------------------

@app.command("list")
def list_labs(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Every lab: name, chapter, title, machines, state (and whether it needs registry images)."""
    from .labhome import LabHome

    labs, problems = discover(OPTS.labs_dirs)
    rows: list[dict[str, Any]] = []
    for l in labs:
        state = LabHome(l).state()
        rows.append(
            {
                "name": l.name,
                "chapter": l.lab.chapter,
                "title": l.lab.title,
                "title_en": l.lab.title_en,
                "machines": [m.name for m in l.lab.machines],
                "offline": l.lab.offline,
                "state": state.phase if state.phase != "destroyed" else "new",
                "folder": str(l.folder),
            }
        )
    if as_json:
        sys.stdout.write(to_json({"labs": rows, "broken": [{"folder": str(p.folder), "error": str(p.error)} for p in problems]}))
    else:
        table = Table(title="vmdock labs")
        # identifiers never split (one machine a line); titles wrap, and say when a lab is not offline
        table.add_column("lab", no_wrap=True)
        table.add_column("ch", no_wrap=True)
        table.add_column("title", overflow="fold", ratio=1, min_width=16)
        table.add_column("machines", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for r in rows:
            title = shown(r["title"]) + (f"\n[dim]{shown(r['title_en'])}[/]" if r["title_en"] else "")
            title += "" if r["offline"] else "\n[yellow]needs registry images[/]"
            table.add_row(shown(r["name"]), str(r["chapter"] or "-"), title, shown("\n".join(r["machines"]), keep="\n"),
                          shown(r["state"]))
        console.print(table)
    for p in problems:
        err_console.print(f"[red]broken lab[/] {shown(str(p.error))}", soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def show(lab: str = LabArg):
    """One lab: book sections, machines, steps, checks."""
    l = resolve(lab, OPTS.labs_dirs).lab
    console.print(f"[bold]{shown(l.name)}[/] — " + (f"第{l.chapter}章 " if l.chapter else "") + f"{shown(l.title)}" + (f" ({shown(l.title_en)})" if l.title_en else ""))
    if l.description:
        console.print(shown(l.description.strip()))
    console.print(f"offline: {'yes' if l.offline else 'no'}; base image: {shown(l.base_image)}")
    if l.needs.images:
        console.print("needs images: " + shown(", ".join(l.needs.images)))
    if l.sections:
        console.print("[bold]sections[/]")
        for section in l.sections:
            console.print(f"  {shown(section)}")
    offset = _engine().port_offset(lab)
    console.print("[bold]machines[/]" + (f" [dim](host ports moved by the port offset {offset})[/]" if offset else ""))
    for m in l.machines:
        ports = ", ".join(f"{p.host_ip}:{p.host + offset}→{p.guest}" for p in m.forwarded_ports)
        console.print(f"  {shown(m.name)}: {shown(m.box)}, {m.cpus} cpu, {m.memory} MiB" + (f", ports {shown(ports)}" if ports else ""))
    console.print("[bold]steps[/]")
    for i, s in enumerate(l.steps, 1):
        on = "all" if s.on == "all" else ", ".join(s.on)
        console.print(f"  {i}. {shown(s.name)}" + (f" [dim]({shown(s.name_en)})[/]" if s.name_en else "") + f" [dim]on {shown(on)}[/]")
    console.print("[bold]checks[/]")
    for c in l.checks:
        console.print(f"  - {shown(c.name)} [dim]({c.type}, on {shown(l.check_machine(c))})[/]")


@app.command()
def steps(lab: str = LabArg):
    """The commands a student would type to do the case by hand, machine by machine."""
    from ipaddress import IPv4Network

    from .labhome import LabHome
    from .provision import exports_file, remote_lab_dir, step_env
    from .render import machine_ips

    loaded = resolve(lab, OPTS.labs_dirs)
    l = loaded.lab
    network = LabHome(loaded).state().network  # chosen by `vmdock up` for this lab instance
    ips = machine_ips(loaded, IPv4Network(network)) if network else {}
    # the same variables vmdock gives each step; secrets and exports are only named
    env = step_env(l, l.machines[0].name, ips, dict.fromkeys(l.secrets, ""), {})
    out = [f"# {l.name}: {l.title}" + (f" — {l.title_en}" if l.title_en else "")]
    out.append(f"# In each machine (vmdock ssh {l.name} MACHINE), as root (sudo -i), first:")
    out.append(f"cd {shlex.quote(remote_lab_dir(l.name))}")
    for k, v in env.items():
        if k in l.secrets:
            out.append(f"export {k}=...   # a secret: vmdock generates one per lab instance (state.json); choose your own")
        elif k != "VMDOCK_MACHINE":
            out.append(f"export {k}={shlex.quote(v)}")
    if not network:
        out.append("# VMDOCK_IP_<MACHINE>: each machine's private address, chosen by `vmdock up` for this home")
    machine = None
    for i, s in enumerate(l.steps):
        for m in l.targets(s):
            out.append("")
            out.append(f"## {s.name}" + (f"  ({s.name_en})" if s.name_en else "") + f"   [on {m}]")
            if m != machine:
                out.append(f"export VMDOCK_MACHINE={shlex.quote(m)}   # in machine {m}")
                machine = m
            if s.exports:
                out.append(f"export VMDOCK_EXPORTS={exports_file(i)}; mkdir -p \"$(dirname \"$VMDOCK_EXPORTS\")\"")
            out.append(s.run.rstrip())
            if s.exports:
                out.append(f'set -a; . "$VMDOCK_EXPORTS"; set +a   # {", ".join(s.exports)}: export these on the other machines too')
    # plain text, never wrapped: students copy these lines (control characters shown, never sent raw)
    sys.stdout.write(visible("\n".join(out), keep="\n\t") + "\n")


@app.command()
def schema():
    """Print the JSON Schema of lab.yaml (for editor completion)."""
    data = LabModel.model_json_schema()
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "vmdock lab.yaml"
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.command()
def render(
    lab: str = LabArg,
    provider: Optional[str] = typer.Option(None, "--provider", help=f"{', '.join(PROVIDER_NAMES)} (also VMDOCK_PROVIDER)"),
):
    """Write the lab's Vagrantfile only, and print its path."""
    events = RichEvents(OPTS.verbose)
    with events:
        path = _engine(events, provider).render(lab)
    console.print(str(path), markup=False, highlight=False)


@app.command()
def up(
    lab: str = LabArg,
    provider: Optional[str] = typer.Option(None, "--provider", help=f"{', '.join(PROVIDER_NAMES)} (also VMDOCK_PROVIDER)"),
    images_dir: Optional[Path] = typer.Option(
        None, "--images-dir", help="folder of `docker save` tarballs for labs that need images (also VMDOCK_IMAGES_DIR)"
    ),
    no_steps: bool = typer.Option(False, "--no-steps", help="student mode: machines, Docker, base image, lab files; none of the steps"),
    upto: Optional[str] = typer.Option(None, "--upto", metavar="STEP", help="stop after this step (its number or name)"),
    no_image: bool = typer.Option(False, "--no-image", help="do not start from a lab image: the full path"),
    port_offset: Optional[int] = typer.Option(
        None, "--port-offset",
        help="move this seat's forwarded host ports by N, as a block (also VMDOCK_PORT_OFFSET; remembered)",
    ),
):
    """Render, bring the machines up, install Docker and run the case's steps (resumes where it stopped)."""
    events = RichEvents(OPTS.verbose)
    with events:
        engine = _engine(events, provider, images_dir=str(images_dir) if images_dir else None, port_offset=port_offset)
        result = engine.up(
            lab, upto=upto, no_steps=no_steps, use_images=not no_image
        )
    _print_up(result)


def _print_up(result) -> None:
    if result.ran == 0:
        console.print(f"[green]{shown(result.lab)} is up[/]: nothing to do, {result.skipped} steps already done ({result.seconds:.1f}s)")
    else:
        console.print(
            f"[green]{shown(result.lab)} is up[/] ({result.provider}): {result.ran} steps run"
            + (f", {result.skipped} already done" if result.skipped else "")
            + f" in {result.seconds:.1f}s. Next: vmdock verify {shown(result.lab)}"
        )


@app.command()
def reset(lab: str = LabArg):
    """Make the lab's machines anew, as `up` left them (from the lab image; in student mode without steps)."""
    from .classroom import Classroom

    events = RichEvents(OPTS.verbose)
    with events:
        result = Classroom(_engine(events)).reset(lab)
    _print_up(result)


def _checks_of(loaded, only: list[str] | None) -> None:
    """Refuse --check names the lab does not have (bad input: before anything runs or is written)."""
    unknown = [n for n in only or [] if n not in {c.name for c in loaded.lab.checks}]
    if unknown:
        raise ConfigError(f"{loaded.name} has no check named {', '.join(map(repr, unknown))}",
                          hint=f"`vmdock show {loaded.name}` lists its checks")


def _reason(exc: VmdockError) -> str:
    """One line for a report: the error, and what to do."""
    return str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")


def _run_checks(engine, loaded, only: list[str] | None):
    """The lab's check results, and the error that kept them from running (each check then an error)."""
    from .verify import errored

    try:
        return engine.verify(loaded.name, only)[1], None
    except VmdockError as exc:
        if isinstance(exc, LabError):
            raise
        return errored(loaded.lab, _reason(exc), only), exc


def _report(lab: str, results, junit: Path | None, as_json: bool, error: VmdockError | None) -> int:
    """Write the JUnit file, print the table or JSON; the exit status of these results."""
    from .verify import junit_xml

    counts = {k: sum(r.status == k for r in results) for k in ("passed", "failed", "error")}
    if junit:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(lab, results), encoding="utf-8")
    if as_json:
        sys.stdout.write(to_json({"lab": lab, "passed": counts["passed"], "failed": counts["failed"],
                                  "errors": counts["error"], "error": _reason(error) if error else None,
                                  "checks": [r.to_dict() for r in results]}))
    else:
        table = Table(title=f"vmdock verify {shown(lab)}")
        table.add_column("", no_wrap=True)
        table.add_column("check", ratio=1, overflow="fold", min_width=12)
        table.add_column("machine", no_wrap=True)
        table.add_column("expected", ratio=1, overflow="fold")
        table.add_column("seen", ratio=2, overflow="fold")
        table.add_column("time", no_wrap=True)
        mark = {"passed": "[green]PASS[/]", "failed": "[red]FAIL[/]", "error": "[red]ERROR[/]"}
        for r in results:
            seen = r.seen if not r.error else ("not run: the error below" if error else f"not run: {r.error}")
            table.add_row(mark[r.status], shown(r.name), shown(r.machine), shown(r.expected), shown(seen), f"{r.seconds:.1f}s")
        console.print(table)
        console.print(f"{counts['passed']} passed, {counts['failed']} failed"
                      + (f", {counts['error']} errors (could not run)" if counts["error"] else ""),
                      markup=False, highlight=False)
        if junit:
            console.print(f"JUnit: {junit}", markup=False, highlight=False)
    if error:
        _print_error(error)
    if counts["error"]:
        return EXIT_INFRASTRUCTURE
    return EXIT_CHECK_FAILED if counts["failed"] else EXIT_OK


def _events_for(as_json: bool, show_results: bool = True) -> Events:
    return Events() if as_json else RichEvents(OPTS.verbose, show_results=show_results)


def _drawing(events: Events):
    """The progress display while a block runs (none for --json); closed before a table is printed."""
    return events if isinstance(events, RichEvents) else contextlib.nullcontext()


@app.command()
def verify(
    lab: str = LabArg,
    as_json: bool = typer.Option(False, "--json", help="print results as JSON"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML to FILE", metavar="FILE"),
    check: Optional[List[str]] = typer.Option(None, "--check", help="run only the check(s) with this name"),
):
    """Run the lab's checks: exit 0 all passed, 1 a check failed, 3 checks could not run (the report says why)."""
    loaded = resolve(lab, OPTS.labs_dirs)
    _checks_of(loaded, check)
    events = _events_for(as_json, show_results=False)
    with _drawing(events):
        results, error = _run_checks(_engine(events), loaded, check)
    raise typer.Exit(_report(loaded.name, results, junit, as_json, error))


@app.command("test")
def test_lab(
    lab: str = LabArg,
    destroy_when: str = typer.Option("passing", "--destroy", help="always, passing (only when every check passed) or never"),
    as_json: bool = typer.Option(False, "--json", help="print results as JSON"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML to FILE", metavar="FILE"),
    provider: Optional[str] = typer.Option(None, "--provider", help=f"{', '.join(PROVIDER_NAMES)} (also VMDOCK_PROVIDER)"),
    images_dir: Optional[Path] = typer.Option(None, "--images-dir", help="folder of `docker save` tarballs (see `up`)"),
):
    """up → verify → destroy in one command, for CI; the report is written whatever happens."""
    from .verify import errored

    if destroy_when not in ("always", "passing", "never"):
        raise ConfigError(f"--destroy must be always, passing or never, not {destroy_when!r}")
    loaded = resolve(lab, OPTS.labs_dirs)
    events = _events_for(as_json)
    engine = _engine(events, provider, images_dir=str(images_dir) if images_dir else None)
    up_error: VmdockError | None = None
    stage = "vmdock up"
    try:
        try:
            with _drawing(events):
                engine.up(loaded.name)
        except VmdockError as exc:
            up_error = exc
        stage = "vmdock verify"
        if up_error:
            results, error = errored(loaded.lab, "vmdock up failed: " + _reason(up_error)), up_error
        else:
            if isinstance(events, RichEvents):
                events.show_results = False  # the table follows
            with _drawing(events):
                results, error = _run_checks(engine, loaded, None)
    except KeyboardInterrupt:  # the report still says what happened; the machines stay for a look
        _report(loaded.name, errored(loaded.lab, f"interrupted (Ctrl-C) during {stage}"), junit, as_json, None)
        raise
    code = _report(loaded.name, results, junit, as_json, error)
    if up_error:
        code = max(code, up_error.exit_status)  # 4: images are missing
    if destroy_when == "always" or (destroy_when == "passing" and code == EXIT_OK):
        with _drawing(events):
            removed = engine.destroy(loaded.name)
        err_console.print(f"{shown(loaded.name)}: destroyed" + (f" ({shown(', '.join(removed))})" if removed else ""))
    else:
        err_console.print(f"{shown(loaded.name)}: machines kept (--destroy {destroy_when}); `vmdock destroy {shown(loaded.name)}` removes them")
    raise typer.Exit(code)


def _last_error(err: dict) -> list[str]:
    """Where the last error happened (machine, step), what it said, the command and its exit code."""
    where = " / ".join(str(err[k]) for k in ("machine", "step") if err.get(k))
    lines = [(f"{where}: " if where else "") + str(err.get("message") or "")]
    if err.get("command"):
        code = f" (exit {err['exit_code']})" if err.get("exit_code") is not None else ""
        lines.append(f"command: {err['command']}{code}")
    return lines


@app.command()
def status(
    lab: Optional[str] = typer.Argument(None, help="one lab (default: every lab with state)"),
    as_json: bool = typer.Option(False, "--json"),
    refresh: bool = typer.Option(False, "--refresh", help="ask Vagrant (slow), not the provider"),
    every: bool = typer.Option(False, "--all", help="every vmdock lab instance on this host, whoever's home it is in"),
):
    """Machines, provider, state, mode, host ports, last good step and last error (machine, step, command)."""
    if every:
        _host_status(as_json)
        return
    rows = _engine().status(lab, refresh=refresh)
    if as_json:
        sys.stdout.write(to_json(rows))
        return
    if not rows:
        console.print("no lab has been brought up (see `vmdock list`)")
        return
    table = Table(title="vmdock status")
    # identifiers never split: one row per machine, the lab's provider and phase under its name
    table.add_column("lab", no_wrap=True)
    table.add_column("machine", no_wrap=True)
    table.add_column("state", overflow="fold")
    table.add_column("steps", no_wrap=True, justify="right")
    for r in rows:
        for i, (m, v) in enumerate(r["machines"].items()):
            lab_cell = f"{shown(r['lab'])}\n[dim]{shown(r['provider'] or '-')}, {shown(r['phase'])}[/]" if i == 0 else ""
            table.add_row(lab_cell, shown(m), shown(v["state"]), str(r["steps_done"]) if i == 0 else "",
                          end_section=i == len(r["machines"]) - 1)
    console.print(table)
    # the long parts under the table, one labelled line each, never broken inside
    for r in rows:
        lines = [f"ssh {m}: {v['ssh']}" for m, v in r["machines"].items() if v["ssh"]]
        lines += [f"port {p['host_ip']}:{p['host']} → {p['machine']}:{p['guest']}" for p in r["ports"]]
        if r["mode"] != "all steps" or r["lab_images"]:  # student mode, or made from lab images
            lines.append(f"mode: {r['mode']}" + (" (from lab images)" if r["lab_images"] else ""))
        lines.append(f"last good step: {r['last_good_step'] or '-'}")
        if r["last_error"]:
            first, *rest = _last_error(r["last_error"])
            lines += [f"last error: {first}", *(f"  {line}" for line in rest)]
        console.print(f"[bold]{shown(r['lab'])}[/]:", highlight=False)
        for line in lines:
            console.print(f"  {shown(line)}", soft_wrap=True, highlight=False)


def _host_status(as_json: bool) -> None:
    rows = _engine().instances()
    if as_json:
        sys.stdout.write(to_json(rows))
        return
    if not rows:
        console.print("no vmdock lab instance on this host")
        return
    table = Table(title="vmdock status --all (this host)")
    for col in ("instance", "lab", "home", "phase", "network", "machines"):
        table.add_column(col, overflow="fold")
    for r in rows:
        machines = "\n".join(f"{m}: {v}" for m, v in r["machines"].items())
        table.add_row(r["instance"] or "-", shown(r["lab"] or "?"), shown(r["home"] or "?"), r["phase"] or "-",
                      r["network"] or "-", shown(machines, keep="\n"))
    console.print(table)


@app.command()
def ssh(lab: str = LabArg, machine: Optional[str] = typer.Argument(None, help="machine (default: the first)")):
    """A shell in a lab machine; `vmdock ssh LAB [MACHINE] -- CMD...` runs one command and exits with its code."""
    argv = _engine().ssh_argv(lab, machine)
    command = OPTS.remote_command
    if command is not None:
        if not command:
            raise ConfigError("nothing after `--`: `vmdock ssh LAB [MACHINE] -- CMD...`")
        # one word is a shell line (`-- 'docker ps | wc -l'`); several are quoted one by one
        argv.append(command[0] if len(command) == 1 else shlex.join(command))
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@app.command()
def halt(lab: str = LabArg):
    """Stop the lab's machines (keeps them and their state)."""
    events = RichEvents(OPTS.verbose)
    with events:
        _engine(events).halt(lab)
    console.print(f"{lab}: halted")


@app.command()
def destroy(lab: str = LabArg):
    """Destroy the machines and everything vmdock made for them (shared images stay: `vmdock prune`)."""
    events = RichEvents(OPTS.verbose)
    with events:
        removed = _engine(events).destroy(lab)
    console.print(f"{lab}: destroyed" + (f" ({', '.join(removed)})" if removed else " (nothing was up)"))


@app.command()
def prune(
    everything: bool = typer.Option(False, "--all", help="the current machine image too"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Remove the shared images (machine images, lab images) no lab on this host uses; say what is kept and why."""
    from .classroom import Classroom

    rows = Classroom(_engine()).prune(everything)
    if as_json:
        sys.stdout.write(to_json([{"image": r.image, "removed": r.removed, "why": r.why} for r in rows]))
        return
    for r in rows:
        console.print(("removed " if r.removed else "kept ") + r.image + f": {r.why}", markup=False, highlight=False)
    if not rows:
        console.print("no vmdock image on this host")


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")):
    """Is this host ready? vagrant, providers, dockerd, KVM, free RAM and disk."""
    from .doctor import run_doctor

    rows = run_doctor()
    if as_json:
        sys.stdout.write(to_json(rows))
    else:
        table = Table(title="vmdock doctor")
        for col in ("", "what", "detail"):
            table.add_column(col, overflow="fold")
        for r in rows:
            mark = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]no[/]"}[r["status"]]
            table.add_row(mark, r["name"], shown(r["detail"]))
        console.print(table)
    if not any(r["status"] == "ok" and r["name"].startswith("provider ") for r in rows):
        raise typer.Exit(EXIT_INFRASTRUCTURE)  # no provider can run machines here


@app.command("config")
def config(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    markdown: bool = typer.Option(False, "--markdown", help="the README's table of every VMDOCK_* variable"),
    provider: Optional[str] = typer.Option(None, "--provider", help="as `vmdock up --provider`"),
    images_dir: Optional[Path] = typer.Option(None, "--images-dir", help="as `vmdock up --images-dir`"),
):
    """Every setting (VMDOCK_* variables, options): its effective value and where it came from."""
    from . import paths, settings

    if markdown:
        sys.stdout.write(settings.markdown_table())
        return
    s = Settings.from_env(provider=provider, images_dir=str(images_dir) if images_dir else None)
    rows = settings.rows(s, {"home": str(paths.vmdock_home()), "cache": str(paths.cache_dir())})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    table = Table(title="vmdock settings")
    for col in ("variable", "value", "from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        value = r["value"]
        shown = "-" if value in (None, [], {}) else (json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value))
        origin = f"option {r['option']}" if r["source"] == "option" else r["source"]
        table.add_row(escape(r["variable"]), escape(shown), origin)
    console.print(table)


# -- lab images -------------------------------------------------------------------

image_app = typer.Typer(no_args_is_help=True, help="Lab images: a lab's machines after its steps, to start `up` and `reset` from.")
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    lab: str = LabArg,
    no_steps: bool = typer.Option(False, "--no-steps", help="the student-mode lab (no steps; its checks are not run)"),
):
    """Bring the lab up if needed, verify it, and capture each machine as a lab image."""
    from .classroom import Classroom

    events = RichEvents(OPTS.verbose)
    start = time.monotonic()
    with events:
        made = Classroom(_engine(events)).build_image(lab, no_steps=no_steps)
    console.print(f"[green]{len(made)} lab image(s)[/] in {time.monotonic() - start:.0f}s: " + ", ".join(i.tag for i in made),
                  highlight=False)


@image_app.command("list")
def image_list(as_json: bool = typer.Option(False, "--json")):
    """Every lab image on this host: lab, provider, machine, size, fingerprint, built when."""
    from .classroom import Classroom

    rows: list[dict[str, Any]] = [{"lab": i.lab, "provider": i.provider, "machine": i.machine, "image": i.tag, "size": i.size,
             "fingerprint": i.fingerprint, "steps": len(i.steps), "built_at": i.built_at, "vmdock": i.version}
            for i in Classroom(_engine()).list_images()]
    if as_json:
        sys.stdout.write(to_json(rows))
        return
    if not rows:
        console.print("no lab image on this host (`vmdock image build LAB` makes one)")
        return
    table = Table(title="vmdock lab images")
    for col in ("lab", "provider", "machine", "image", "size", "fingerprint", "items", "built"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["lab"], r["provider"], r["machine"], shown(r["image"]), f"{r['size'] / 1e6:.0f} MB",
                      r["fingerprint"][:16], str(r["steps"]), r["built_at"])
    console.print(table)


# -- boxes ------------------------------------------------------------------------

box_app = typer.Typer(no_args_is_help=True, help="Base boxes: build vmdock's own (offline, from the Debian mirror), list them.")
app.add_typer(box_app, name="box")


@box_app.command("build")
def box_build(
    provider: str = typer.Option("libvirt", "--provider", help="libvirt (a Vagrant box) or docker (the machine image)"),
    box: str = typer.Option("debian12", "--box", help="a box of boxes/boxes.yaml"),
    force: bool = typer.Option(False, "--force", help="build anew even when cached, and register again"),
):
    """Build a base box from the Debian mirror (VMDOCK_APT_MIRROR) and register it with Vagrant."""
    from . import paths
    from .hostbuild import box_image
    from .runlog import Log

    events = RichEvents(OPTS.verbose)
    log = Log(paths.cache_dir() / "boxes" / "build.log")
    start = time.monotonic()
    with events:
        events.task(f"box build ({provider})")
        made = box_image.build(
            log, provider=provider, box=box, mirror=Settings.from_env().apt_mirror, force=force,
            on_line=lambda line: events.line("box", line), on_info=events.info,
        )
        events.task_done(f"box build ({provider})", time.monotonic() - start)
    console.print(f"[green]{shown(made)}[/] ready ({time.monotonic() - start:.0f}s); log: {shown(str(log.path))}")


@box_app.command("list")
def box_list(as_json: bool = typer.Option(False, "--json")):
    """Every base box per provider: what a lab machine gets, and the boxes vmdock built."""
    from .hostbuild import boxes

    rows = boxes.list_boxes()
    if as_json:
        sys.stdout.write(to_json(rows))
        return
    table = Table(title="vmdock boxes")
    for col in ("box", "provider", "a machine gets", "vmdock-built", "registered"):
        table.add_column(col, overflow="fold")
    for r in rows:
        cached = r["cached"]
        built = (f"{r['vmdock_box']}: {cached['size'] / 1e6:.0f} MB, {cached['built_at'] or '?'}" if cached
                 else (f"{r['vmdock_box']}: not built (`vmdock box build`)" if r["vmdock_box"] else "-"))
        uses = (r["uses"] or "-") + (f" from {r['url_override']}" if r["url_override"] and r["provider"] != "docker" else "")
        reg = "yes" if r["registered"] else ("no" if r["vmdock_box"] else "-")
        table.add_row(f"{r['box']}\n[dim]{shown(r['title'])}[/]", r["provider"], shown(uses), shown(built), reg)
    console.print(table)


# -- bundles ----------------------------------------------------------------------

bundle_app = typer.Typer(
    no_args_is_help=True,
    help="One file with everything some labs need offline: export where the network is, import in the classroom.",
)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("export")
def bundle_export(
    file: Path = typer.Argument(..., help="the bundle to write (e.g. class.vmdock)"),
    labs: list[str] = typer.Argument(
        ..., help="labs to carry (names, chapters or numbers)", autocompletion=_complete_lab
    ),
    images_dir: Path | None = typer.Option(
        None, "--images-dir", help="folder of `docker save` tarballs for online labs (also VMDOCK_IMAGES_DIR)"
    ),
    level: int = typer.Option(3, "--level", min=1, max=19, help="zstd level (3: fast to unpack, measured)"),
):
    """Write the machine image, lab images, rootfs, boxes and needed image tarballs of LABS into FILE."""
    from . import bundle

    loaded = [resolve(name, OPTS.labs_dirs) for name in dict.fromkeys(labs)]
    settings = Settings.from_env(images_dir=str(images_dir) if images_dir else None)
    start = time.monotonic()
    with RichEvents(OPTS.verbose) as events:
        manifest = bundle.export(file, loaded, settings, events, bundle.log_file(), level=level)
    size = sum(m.size for m in manifest.members)
    console.print(f"[green]{escape(str(file))}[/]: {len(manifest.members)} members, {size / 1e6:.0f} MB, "
                  f"labs {escape(', '.join(e.name for e in manifest.labs))} ({time.monotonic() - start:.0f}s)")


@bundle_app.command("import")
def bundle_import(file: Path = typer.Argument(..., help="a bundle made by `vmdock bundle export`")):
    """Check every member of FILE, then load its images and put its files into the cache (all or nothing)."""
    from . import bundle

    start = time.monotonic()
    with RichEvents(OPTS.verbose) as events:
        outcomes = bundle.import_bundle(file, events, bundle.log_file())
        notes = bundle.lab_notes(bundle.read_manifest(file), OPTS.labs_dirs)
    for o in outcomes:
        what = ", ".join(r.ref for r in o.member.images) if o.member.kind == "docker-images" else o.member.target
        note = f" [dim]({escape(o.note)})[/]" if o.note else ""
        console.print(f"{o.status}: {o.member.kind} {escape(what)}{note}", soft_wrap=True)
    for line in notes:
        console.print(f"[yellow]note[/]: {escape(line)}", soft_wrap=True)
    console.print(f"[green]{escape(str(file))} imported[/] ({time.monotonic() - start:.0f}s)")


@bundle_app.command("inspect")
def bundle_inspect(
    file: Path = typer.Argument(..., help="a bundle"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
):
    """Show a bundle's manifest (members, labs, notes) without importing anything."""
    from . import bundle

    manifest = bundle.read_manifest(file)
    if as_json:
        sys.stdout.write(manifest.model_dump_json(indent=2) + "\n")
        return
    made = f"made by vmdock {manifest.vmdock_version} at {manifest.created}"
    console.print(f"vmdock bundle v{manifest.format_version}, {made}", markup=False, highlight=False)
    table = Table(title=str(file))
    for col in ("member", "kind", "size", "content", "sha256"):
        table.add_column(col, overflow="fold")
    for m in manifest.members:
        content = "\n".join(r.ref for r in m.images) or m.target
        table.add_row(escape(m.path), m.kind, f"{m.size / 1e6:.1f} MB", escape(content), m.sha256[:16])
    console.print(table)
    for e in manifest.labs:
        lab_images = escape(", ".join(e.lab_images) or "none")
        console.print(f"lab {escape(e.name)} [dim]{e.fingerprint[:16]}[/]: lab images {lab_images}"
                      + (f"; needs {escape(', '.join(e.needs_images))}" if e.needs_images else ""))
        for note in e.notes:
            console.print(f"  [yellow]note[/]: {escape(note)}")
    for note in manifest.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")


bundle_app.command("list", help="Same as `inspect`.")(bundle_inspect)


# -- entry point ------------------------------------------------------------------

def _print_error(exc: VmdockError) -> None:
    headline = str(exc).splitlines()
    # soft_wrap: no line breaks at 80 columns in a pipe or CI log (`file: field: message` stays one line)
    err_console.print(f"[bold red]error:[/] {shown(headline[0])}", highlight=False, soft_wrap=True)
    for line in headline[1:]:
        err_console.print(f"  {shown(line)}", highlight=False, soft_wrap=True)
    for line in exc.details():
        err_console.print(f"  {shown(line)}", highlight=False, soft_wrap=True)


def _split_remote_command(args: list[str]) -> tuple[list[str], list[str] | None]:
    """`vmdock [OPTIONS] ssh LAB [MACHINE] -- CMD...`: the words after `--` are the remote command.

    Click would take the first of them for MACHINE, so they are cut off before it parses.
    """
    for i, arg in enumerate(args):
        if arg == "ssh" and (i == 0 or args[i - 1] != "--labs-dir") and "--" in args[i:]:
            cut = args.index("--", i)
            return args[:cut], args[cut + 1:]
        if not arg.startswith("-") and (i == 0 or args[i - 1] != "--labs-dir"):
            break  # another command
    return args, None


def main(argv: list[str] | None = None) -> int:
    args, OPTS.remote_command = _split_remote_command(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = app(args=args, standalone_mode=False, prog_name="vmdock")
        code = rv if isinstance(rv, int) else EXIT_OK
    except VmdockError as exc:
        if OPTS.debug:
            traceback.print_exc()
        _print_error(exc)
        code = exc.exit_status
    except typer.Exit as exc:
        code = exc.exit_code
    except _ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        err_console.print("[yellow]interrupted[/]: the lab's state is kept; run the same command again to resume")
        code = EXIT_INTERRUPTED
    except Exception:  # a bug in vmdock: never exit 1 ("a check failed")
        traceback.print_exc()
        err_console.print("[bold red]error:[/] vmdock itself failed (the traceback above); please report it")
        code = EXIT_INFRASTRUCTURE
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
