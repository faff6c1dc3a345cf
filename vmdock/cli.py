"""The command line: a thin typer layer over ``vmdock.engine``.

The only module that prints or exits.  Errors from below arrive as
``VmdockError``s and become one headline, a few detail lines (command, exit
code, stderr tail, log file) and an exit status; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import List, Optional

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
from .errors import ConfigError, VmdockError
from .events import Events
from .loader import LAB_FILE, discover, resolve, search_path
from .model import Lab as LabModel
from .settings import Settings

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


OPTS = _Opts()


def _complete_lab(ctx: typer.Context, incomplete: str) -> list[str]:
    """Lab names for shell completion: folder names on the search path, no lab.yaml parsed."""
    extra = ctx.find_root().params.get("labs_dir") or []
    names = {f.parent.name for d in search_path(list(extra)) if d.is_dir() for f in d.glob(f"*/{LAB_FILE}")}
    return sorted(n for n in names if n.startswith(incomplete))


LabArg = typer.Argument(..., help="lab name (ch6-lamp), chapter (ch6) or number (6)", autocompletion=_complete_lab)


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
        self.progress.console.print(f"[cyan]•[/] {escape(message)}")

    def task(self, name):
        with self._lock:
            self.tasks[("task", name)] = self.progress.add_task(f"[bold]{escape(name)}[/]", total=None)

    def task_done(self, name, seconds):
        with self._lock:
            task = self.tasks.pop(("task", name), None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.console.print(f"[green]✓[/] {escape(name)} [dim]{seconds:.1f}s[/]")

    def step_start(self, machine, key, title):
        with self._lock:
            self.tasks[(machine, key)] = self.progress.add_task(f"[magenta]{escape(machine)}[/] {escape(title)}", total=None)

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
                self.progress.console.print(f"[dim]· {machine} {escape(title)} (done before)[/]")
            return
        self.progress.console.print(f"[green]✓[/] [magenta]{escape(machine)}[/] {escape(title)} [dim]{seconds:.1f}s[/]")

    def step_failed(self, machine, key, title, seconds):
        self._finish(machine, key)
        if not self.show_results:
            return
        self.progress.console.print(f"[red]✗[/] [magenta]{escape(machine)}[/] {escape(title)} [dim]{seconds:.1f}s[/]")

    def line(self, source, text):
        if self.verbose:
            self.progress.console.print(f"[dim]{escape(source)} |[/] {escape(text)}", highlight=False)


def _engine(events: Events | None = None, provider: Optional[str] = None, **settings):
    from .engine import Engine

    return Engine(Settings.from_env(provider=provider, **settings), events or Events(), OPTS.labs_dirs)


# -- commands ------------------------------------------------------------------

@app.command("list")
def list_labs(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Every lab: name, chapter, title, machines, offline-capable, state."""
    from .labhome import LabHome

    labs, problems = discover(OPTS.labs_dirs)
    rows = []
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
                "state": state.phase.value if state.phase != "destroyed" else "new",
                "folder": str(l.folder),
            }
        )
    if as_json:
        console.print_json(json.dumps({"labs": rows, "broken": [{"folder": str(p.folder), "error": str(p.error)} for p in problems]}, ensure_ascii=False))
    else:
        table = Table(title="vmdock labs")
        for col in ("lab", "ch", "title", "machines", "offline", "state"):
            table.add_column(col)
        for r in rows:
            title = r["title"] + (f"\n[dim]{escape(r['title_en'])}[/]" if r["title_en"] else "")
            table.add_row(r["name"], str(r["chapter"] or "-"), title, ", ".join(r["machines"]), "yes" if r["offline"] else "no", r["state"])
        console.print(table)
    for p in problems:
        err_console.print(f"[red]broken lab[/] {escape(str(p.error))}", soft_wrap=True)
    if problems:
        raise typer.Exit(2)


@app.command()
def show(lab: str = LabArg):
    """One lab: book sections, machines, steps, checks."""
    l = resolve(lab, OPTS.labs_dirs).lab
    console.print(f"[bold]{escape(l.name)}[/] — " + (f"第{l.chapter}章 " if l.chapter else "") + f"{escape(l.title)}" + (f" ({escape(l.title_en)})" if l.title_en else ""))
    if l.description:
        console.print(escape(l.description.strip()))
    console.print(f"offline: {'yes' if l.offline else 'no'}; base image: {escape(l.base_image)}")
    if l.needs.images:
        console.print("needs images: " + escape(", ".join(l.needs.images)))
    if l.sections:
        console.print("[bold]sections[/]")
        for s in l.sections:
            console.print(f"  {escape(s)}")
    offset = _engine().port_offset(lab)
    console.print("[bold]machines[/]" + (f" [dim](host ports moved by the port offset {offset})[/]" if offset else ""))
    for m in l.machines:
        ports = ", ".join(f"{p.host_ip}:{p.host + offset}→{p.guest}" for p in m.forwarded_ports)
        console.print(f"  {m.name}: {escape(m.box)}, {m.cpus} cpu, {m.memory} MiB" + (f", ports {escape(ports)}" if ports else ""))
    console.print("[bold]steps[/]")
    for i, s in enumerate(l.steps, 1):
        on = "all" if s.on == "all" else ", ".join(s.on)
        console.print(f"  {i}. {escape(s.name)}" + (f" [dim]({escape(s.name_en)})[/]" if s.name_en else "") + f" [dim]on {on}[/]")
    console.print("[bold]checks[/]")
    for c in l.checks:
        console.print(f"  - {escape(c.name)} [dim]({c.type}, on {l.check_machine(c)})[/]")


@app.command()
def steps(lab: str = LabArg):
    """The commands a student would type to do the case by hand, section by section."""
    import shlex

    from ipaddress import IPv4Network

    from .labhome import LabHome
    from .provision import env_key, remote_lab_dir
    from .render import machine_ips

    loaded = resolve(lab, OPTS.labs_dirs)
    l = loaded.lab
    out = [f"# {l.name}: {l.title}" + (f" — {l.title_en}" if l.title_en else "")]
    out.append(f"# In each machine (vmdock ssh {l.name} MACHINE), as root: sudo -i, then:")
    out.append(f"cd {remote_lab_dir(l.name)}")
    network = LabHome(loaded).state().network  # chosen by `vmdock up` for this lab instance
    for name, ip in (machine_ips(loaded, IPv4Network(network)) if network else {}).items():
        out.append(f"export VMDOCK_IP_{env_key(name)}={ip}")
    if not network:
        out.append("# VMDOCK_IP_<MACHINE>: the machines' private addresses, chosen by `vmdock up`")
    out.append(f"export VMDOCK_BASE_IMAGE={shlex.quote(l.base_image)}")
    for k, v in l.env.items():
        out.append(f"export {k}={shlex.quote(v)}")
    for k in l.secrets:
        out.append(f"export {k}=...   # a secret: vmdock generates one per lab instance (state.json); choose your own")
    for s in l.steps:
        on = "every machine" if s.on == "all" else ", ".join(s.on)
        out.append("")
        out.append(f"## {s.name}" + (f"  ({s.name_en})" if s.name_en else "") + f"   [on {on}]")
        if s.exports:
            out.append(f"# this step writes {', '.join(s.exports)} as KEY=value lines to $VMDOCK_EXPORTS: export them on the next machines")
            out.append("export VMDOCK_EXPORTS=/tmp/exports")
        out.append(s.run.rstrip())
    # plain text, never wrapped: students copy these lines
    sys.stdout.write("\n".join(out) + "\n")


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
    port_offset: Optional[int] = typer.Option(
        None, "--port-offset",
        help="move this seat's forwarded host ports by N, as a block (also VMDOCK_PORT_OFFSET; remembered)",
    ),
    no_steps: bool = typer.Option(False, "--no-steps", help="student mode: machines, Docker, base image, lab files; none of the steps"),
    upto: Optional[str] = typer.Option(None, "--upto", metavar="STEP", help="stop after this step (its number or name)"),
    no_image: bool = typer.Option(False, "--no-image", help="do not start from a lab image: the full path"),
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
        console.print(f"[green]{result.lab} is up[/]: nothing to do, {result.skipped} steps already done ({result.seconds:.1f}s)")
    else:
        console.print(
            f"[green]{result.lab} is up[/] ({result.provider}): {result.ran} steps run"
            + (f", {result.skipped} already done" if result.skipped else "")
            + f" in {result.seconds:.1f}s. Next: vmdock verify {result.lab}"
        )


@app.command()
def reset(lab: str = LabArg):
    """Make the lab's machines anew, as `up` left them (from the lab image; in student mode without steps)."""
    from .classroom import Classroom

    events = RichEvents(OPTS.verbose)
    with events:
        result = Classroom(_engine(events)).reset(lab)
    _print_up(result)


@app.command()
def verify(
    lab: str = LabArg,
    as_json: bool = typer.Option(False, "--json", help="print results as JSON"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML to FILE", metavar="FILE"),
    check: Optional[List[str]] = typer.Option(None, "--check", help="run only the check(s) with this name"),
):
    """Run the lab's checks: a table; exit 0 only if every check passes."""
    from .verify import junit_xml

    events = RichEvents(OPTS.verbose, show_results=False) if not as_json else Events()
    if isinstance(events, RichEvents):
        with events:
            l, results = _engine(events).verify(lab, check)
    else:
        l, results = _engine(events).verify(lab, check)
    passed = sum(r.passed for r in results)
    if junit:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(l.name, results), encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps({"lab": l.name, "passed": passed, "failed": len(results) - passed,
                                     "checks": [r.to_dict() for r in results]}, indent=2, ensure_ascii=False) + "\n")
    else:
        table = Table(title=f"vmdock verify {l.name}")
        for col in ("", "check", "machine", "expected", "seen", "time"):
            table.add_column(col, overflow="fold")
        for r in results:
            table.add_row("[green]PASS[/]" if r.passed else "[red]FAIL[/]", escape(r.name), r.machine,
                          escape(r.expected), escape(r.seen), f"{r.seconds:.1f}s")
        console.print(table)
        console.print(f"{passed} passed, {len(results) - passed} failed", markup=False, highlight=False)
        if junit:
            console.print(f"JUnit: {junit}", markup=False, highlight=False)
    if passed != len(results):
        raise typer.Exit(1)


@app.command()
def status(
    lab: Optional[str] = typer.Argument(None, help="one lab (default: every lab with state)"),
    as_json: bool = typer.Option(False, "--json"),
    refresh: bool = typer.Option(False, "--refresh", help="ask Vagrant (slow), not the provider"),
    every: bool = typer.Option(False, "--all", help="every vmdock lab instance on this host, whoever's home it is in"),
):
    """Machines, provider, state, last good step and forwarded host ports."""
    if every:
        _host_status(as_json)
        return
    rows = _engine().status(lab, refresh=refresh)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    if not rows:
        console.print("no lab has been brought up (see `vmdock list`)")
        return
    table = Table(title="vmdock status")
    for col in ("lab", "provider", "phase", "machines", "host ports", "steps done", "last good step", "last error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        machines = "\n".join(f"{m}: {v['state']}" + (f" ({v['ssh']})" if v["ssh"] else "") for m, v in r["machines"].items())
        ports = "\n".join(f"{p['host_ip']}:{p['host']}→{p['machine']}:{p['guest']}" for p in r["ports"])
        err = r["last_error"]["message"] if r["last_error"] else ""
        phase = r["phase"] + f"\n[dim]{escape(r['mode'])}[/]" + ("\n[dim]from lab images[/]" if r["lab_images"] else "")
        table.add_row(r["lab"], r["provider"] or "-", phase, escape(machines), escape(ports), str(r["steps_done"]),
                      r["last_good_step"] or "-", escape(err))
    console.print(table)


def _host_status(as_json: bool) -> None:
    rows = _engine().instances()
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    if not rows:
        console.print("no vmdock lab instance on this host")
        return
    table = Table(title="vmdock status --all (this host)")
    for col in ("instance", "lab", "home", "phase", "network", "machines"):
        table.add_column(col, overflow="fold")
    for r in rows:
        machines = "\n".join(f"{m}: {v}" for m, v in r["machines"].items())
        table.add_row(r["instance"] or "-", r["lab"] or "?", escape(r["home"] or "?"), r["phase"] or "-",
                      r["network"] or "-", escape(machines))
    console.print(table)


@app.command()
def ssh(lab: str = LabArg, machine: Optional[str] = typer.Argument(None, help="machine (default: the first)")):
    """Open a shell in a lab machine."""
    argv = _engine().ssh_argv(lab, machine)
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
        sys.stdout.write(json.dumps([{"image": r.image, "removed": r.removed, "why": r.why} for r in rows], indent=2) + "\n")
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
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        table = Table(title="vmdock doctor")
        for col in ("", "what", "detail"):
            table.add_column(col, overflow="fold")
        for r in rows:
            mark = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]no[/]"}[r["status"]]
            table.add_row(mark, r["name"], escape(r["detail"]))
        console.print(table)
    if not any(r["status"] == "ok" and r["name"].startswith("provider ") for r in rows):
        raise typer.Exit(1)


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

    rows = [{"lab": i.lab, "provider": i.provider, "machine": i.machine, "image": i.tag, "size": i.size,
             "fingerprint": i.fingerprint, "steps": len(i.steps), "built_at": i.built_at, "vmdock": i.version}
            for i in Classroom(_engine()).list_images()]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    if not rows:
        console.print("no lab image on this host (`vmdock image build LAB` makes one)")
        return
    table = Table(title="vmdock lab images")
    for col in ("lab", "provider", "machine", "image", "size", "fingerprint", "items", "built"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["lab"], r["provider"], r["machine"], escape(r["image"]), f"{r['size'] / 1e6:.0f} MB",
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
    from . import boxes, paths
    from .runlog import Log

    events = RichEvents(OPTS.verbose)
    log = Log(paths.cache_dir() / "boxes" / "build.log")
    start = time.monotonic()
    with events:
        events.task(f"box build ({provider})")
        made = boxes.build(
            log, provider=provider, box=box, mirror=Settings.from_env().apt_mirror, force=force,
            on_line=lambda line: events.line("box", line), on_info=events.info,
        )
        events.task_done(f"box build ({provider})", time.monotonic() - start)
    console.print(f"[green]{escape(made)}[/] ready ({time.monotonic() - start:.0f}s); log: {escape(str(log.path))}")


@box_app.command("list")
def box_list(as_json: bool = typer.Option(False, "--json")):
    """Every base box per provider: what a lab machine gets, and the boxes vmdock built."""
    from . import boxes

    rows = boxes.list_boxes()
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
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
        table.add_row(f"{r['box']}\n[dim]{escape(r['title'])}[/]", r["provider"], escape(uses), escape(built), reg)
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
    err_console.print(f"[bold red]error:[/] {escape(headline[0])}", highlight=False, soft_wrap=True)
    for line in headline[1:]:
        err_console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    for line in exc.details():
        err_console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="vmdock")
        code = rv if isinstance(rv, int) else 0
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
        code = 130
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
