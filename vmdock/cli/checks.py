"""Check commands: verify and test, and the reports they write (table, JSON, JUnit)."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer
from rich.table import Table

from ..errors import (
    EXIT_CHECK_FAILED,
    EXIT_INFRASTRUCTURE,
    EXIT_OK,
    ConfigError,
    LabError,
    VmdockError,
)
from ..events import Events
from ..providers import NAMES as PROVIDER_NAMES
from .common import (
    OPTS,
    LabArg,
    RichEvents,
    app,
    console,
    err_console,
    make_engine,
    print_error,
    resolve_lab,
    shown,
    to_json,
)


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
    from ..verify import errored

    try:
        return engine.verify(loaded.name, only)[1], None
    except VmdockError as exc:
        if isinstance(exc, LabError):
            raise
        return errored(loaded.lab, _reason(exc), only), exc


def _report(lab: str, results, junit: Path | None, as_json: bool, error: VmdockError | None) -> int:
    """Write the JUnit file, print the table or JSON; the exit status of these results."""
    from ..verify import junit_xml

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
            table.add_row(
                mark[r.status], shown(r.name), shown(r.machine), shown(r.expected), shown(seen), f"{r.seconds:.1f}s"
            )
        console.print(table)
        console.print(f"{counts['passed']} passed, {counts['failed']} failed"
                      + (f", {counts['error']} errors (could not run)" if counts["error"] else ""),
                      markup=False, highlight=False)
        if junit:
            console.print(f"JUnit: {junit}", markup=False, highlight=False)
    if error:
        print_error(error)
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
    junit: Path | None = typer.Option(None, "--junit", help="write JUnit XML to FILE", metavar="FILE"),
    check: list[str] | None = typer.Option(None, "--check", help="run only the check(s) with this name"),
):
    """Run the lab's checks: exit 0 all passed, 1 a check failed, 3 checks could not run (the report says why)."""
    loaded = resolve_lab(lab)
    _checks_of(loaded, check)
    events = _events_for(as_json, show_results=False)
    with _drawing(events):
        results, error = _run_checks(make_engine(events), loaded, check)
    raise typer.Exit(_report(loaded.name, results, junit, as_json, error))


@app.command("test")
def test_lab(
    lab: str = LabArg,
    destroy_when: str = typer.Option(
        "passing", "--destroy", help="always, passing (only when every check passed) or never"
    ),
    as_json: bool = typer.Option(False, "--json", help="print results as JSON"),
    junit: Path | None = typer.Option(None, "--junit", help="write JUnit XML to FILE", metavar="FILE"),
    provider: str | None = typer.Option(
        None, "--provider", help=f"{', '.join(PROVIDER_NAMES)} (also VMDOCK_PROVIDER)"
    ),
    images_dir: Path | None = typer.Option(None, "--images-dir", help="folder of `docker save` tarballs (see `up`)"),
):
    """up → verify → destroy in one command, for CI; the report is written whatever happens."""
    from ..verify import errored

    if destroy_when not in ("always", "passing", "never"):
        raise ConfigError(f"--destroy must be always, passing or never, not {destroy_when!r}")
    loaded = resolve_lab(lab)
    events = _events_for(as_json)
    engine = make_engine(events, provider, images_dir=str(images_dir) if images_dir else None)
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
        err_console.print(
            f"{shown(loaded.name)}: machines kept (--destroy {destroy_when}); "
            f"`vmdock destroy {shown(loaded.name)}` removes them"
        )
    raise typer.Exit(code)


