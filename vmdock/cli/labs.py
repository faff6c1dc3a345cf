"""Lab commands: list, show, steps, schema, render, up, reset, status, ssh, halt, destroy, prune."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .. import paths
from ..errors import (
    EXIT_BAD_INPUT,
    ConfigError,
)
from ..labindex import summaries
from ..providers import NAMES as PROVIDER_NAMES
from ..state import LabState
from .common import (
    OPTS,
    LabArg,
    RichEvents,
    app,
    console,
    err_console,
    make_engine,
    resolve_lab,
    shown,
    to_json,
    visible,
)

# -- commands ------------------------------------------------------------------

@app.command("list")
def list_labs(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Every lab: name, chapter, title, machines, state (and whether it needs registry images)."""
    labs, problems = summaries(OPTS.labs_dirs)
    rows: list[dict[str, Any]] = []
    for found in labs:
        state = LabState.load(paths.state_file(found.name), found.name)
        rows.append(
            {
                "name": found.name,
                "chapter": found.chapter,
                "title": found.title,
                "title_en": found.title_en,
                "machines": list(found.machines),
                "offline": found.offline,
                "state": state.phase.value if state.phase != "destroyed" else "new",
                "folder": str(found.folder),
            }
        )
    if as_json:
        broken = [{"folder": str(p.folder), "error": str(p.error)} for p in problems]
        sys.stdout.write(to_json({"labs": rows, "broken": broken}))
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
    spec = resolve_lab(lab).lab
    console.print(
        f"[bold]{shown(spec.name)}[/] — " + (f"第{spec.chapter}章 " if spec.chapter else "") + shown(spec.title)
        + (f" ({shown(spec.title_en)})" if spec.title_en else "")
    )
    if spec.description:
        console.print(shown(spec.description.strip()))
    console.print(f"offline: {'yes' if spec.offline else 'no'}; base image: {shown(spec.base_image)}")
    if spec.needs.images:
        console.print("needs images: " + shown(", ".join(spec.needs.images)))
    if spec.sections:
        console.print("[bold]sections[/]")
        for section in spec.sections:
            console.print(f"  {shown(section)}")
    offset = make_engine().port_offset(lab)
    console.print("[bold]machines[/]" + (f" [dim](host ports moved by the port offset {offset})[/]" if offset else ""))
    for m in spec.machines:
        ports = ", ".join(f"{p.host_ip}:{p.host + offset}→{p.guest}" for p in m.forwarded_ports)
        console.print(
            f"  {shown(m.name)}: {shown(m.box)}, {m.cpus} cpu, {m.memory} MiB"
            + (f", ports {shown(ports)}" if ports else "")
        )
    console.print("[bold]steps[/]")
    for i, s in enumerate(spec.steps, 1):
        on = "all" if s.on == "all" else ", ".join(s.on)
        console.print(
            f"  {i}. {shown(s.name)}"
            + (f" [dim]({shown(s.name_en)})[/]" if s.name_en else "")
            + f" [dim]on {shown(on)}[/]"
        )
    console.print("[bold]checks[/]")
    for c in spec.checks:
        console.print(f"  - {shown(c.name)} [dim]({c.type}, on {shown(spec.check_machine(c))})[/]")


@app.command()
def steps(lab: str = LabArg):
    """The commands a student would type to do the case by hand, machine by machine."""
    from ipaddress import IPv4Network

    from ..labcontext import exports_file, remote_lab_dir, step_env
    from ..labhome import LabHome
    from ..render import machine_ips

    loaded = resolve_lab(lab)
    spec = loaded.lab
    network = LabHome(loaded).state().network  # chosen by `vmdock up` for this lab instance
    ips = machine_ips(loaded, IPv4Network(network)) if network else {}
    # the same variables vmdock gives each step; secrets and exports are only named
    env = step_env(spec, spec.machines[0].name, ips, dict.fromkeys(spec.secrets, ""), {})
    out = [f"# {spec.name}: {spec.title}" + (f" — {spec.title_en}" if spec.title_en else "")]
    out.append(f"# In each machine (vmdock ssh {spec.name} MACHINE), as root (sudo -i), first:")
    out.append(f"cd {shlex.quote(remote_lab_dir(spec.name))}")
    for k, v in env.items():
        if k in spec.secrets:
            out.append(
                f"export {k}=...   # a secret: vmdock generates one per lab instance (state.json); choose your own"
            )
        elif k != "VMDOCK_MACHINE":
            out.append(f"export {k}={shlex.quote(v)}")
    if not network:
        out.append("# VMDOCK_IP_<MACHINE>: each machine's private address, chosen by `vmdock up` for this home")
    machine = None
    for i, s in enumerate(spec.steps):
        for m in spec.targets(s):
            out.append("")
            out.append(f"## {s.name}" + (f"  ({s.name_en})" if s.name_en else "") + f"   [on {m}]")
            if m != machine:
                out.append(f"export VMDOCK_MACHINE={shlex.quote(m)}   # in machine {m}")
                machine = m
            if s.exports:
                out.append(f"export VMDOCK_EXPORTS={exports_file(i)}; mkdir -p \"$(dirname \"$VMDOCK_EXPORTS\")\"")
            out.append(s.run.rstrip())
            if s.exports:
                out.append(
                    f'set -a; . "$VMDOCK_EXPORTS"; set +a   # {", ".join(s.exports)}: '
                    "export these on the other machines too"
                )
    # plain text, never wrapped: students copy these lines (control characters shown, never sent raw)
    sys.stdout.write(visible("\n".join(out), keep="\n\t") + "\n")


@app.command()
def schema():
    """Print the JSON Schema of lab.yaml (for editor completion)."""
    from ..model import Lab

    data = Lab.model_json_schema()
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "vmdock lab.yaml"
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.command()
def render(
    lab: str = LabArg,
    provider: str | None = typer.Option(None, "--provider", help=f"{', '.join(PROVIDER_NAMES)} (also VMDOCK_PROVIDER)"),
):
    """Write the lab's Vagrantfile only, and print its path."""
    events = RichEvents(OPTS.verbose)
    with events:
        path = make_engine(events, provider).render(lab)
    console.print(str(path), markup=False, highlight=False)


@app.command()
def up(
    lab: str = LabArg,
    provider: str | None = typer.Option(None, "--provider", help=f"{', '.join(PROVIDER_NAMES)} (also VMDOCK_PROVIDER)"),
    images_dir: Path | None = typer.Option(
        None, "--images-dir", help="folder of `docker save` tarballs for labs that need images (also VMDOCK_IMAGES_DIR)"
    ),
    no_steps: bool = typer.Option(
        False, "--no-steps", help="student mode: machines, Docker, base image, lab files; none of the steps"
    ),
    upto: str | None = typer.Option(None, "--upto", metavar="STEP", help="stop after this step (its number or name)"),
    no_image: bool = typer.Option(False, "--no-image", help="do not start from a lab image: the full path"),
    port_offset: int | None = typer.Option(
        None, "--port-offset",
        help="move this seat's forwarded host ports by N, as a block (also VMDOCK_PORT_OFFSET; remembered)",
    ),
):
    """Render, bring the machines up, install Docker and run the case's steps (resumes where it stopped)."""
    events = RichEvents(OPTS.verbose)
    with events:
        engine = make_engine(
            events, provider, images_dir=str(images_dir) if images_dir else None, port_offset=port_offset
        )
        result = engine.up(lab, upto=upto, no_steps=no_steps, use_images=not no_image)
    _print_up(result)


def _print_up(result) -> None:
    if result.ran == 0:
        console.print(
            f"[green]{shown(result.lab)} is up[/]: nothing to do, "
            f"{result.skipped} steps already done ({result.seconds:.1f}s)"
        )
    else:
        console.print(
            f"[green]{shown(result.lab)} is up[/] ({result.provider}): {result.ran} steps run"
            + (f", {result.skipped} already done" if result.skipped else "")
            + f" in {result.seconds:.1f}s. Next: vmdock verify {shown(result.lab)}"
        )




@app.command()
def reset(lab: str = LabArg):
    """Make the lab's machines anew, as `up` left them (from the lab image; in student mode without steps)."""
    from ..classroom import Classroom

    events = RichEvents(OPTS.verbose)
    with events:
        result = Classroom(make_engine(events)).reset(lab)
    _print_up(result)




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
    lab: str | None = typer.Argument(None, help="one lab (default: every lab with state)"),
    as_json: bool = typer.Option(False, "--json"),
    refresh: bool = typer.Option(False, "--refresh", help="ask Vagrant (slow), not the provider"),
    every: bool = typer.Option(False, "--all", help="every vmdock lab instance on this host, whoever's home it is in"),
):
    """Machines, provider, state, mode, host ports, last good step and last error (machine, step, command)."""
    if every:
        _host_status(as_json)
        return
    rows = make_engine().status(lab, refresh=refresh)
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
            about = f"{shown(r['provider'] or '-')}, {shown(r['phase'])}"
            lab_cell = f"{shown(r['lab'])}\n[dim]{about}[/]" if i == 0 else ""
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
    rows = make_engine().instances()
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
def ssh(lab: str = LabArg, machine: str | None = typer.Argument(None, help="machine (default: the first)")):
    """A shell in a lab machine; `vmdock ssh LAB [MACHINE] -- CMD...` runs one command and exits with its code."""
    argv = make_engine().ssh_argv(lab, machine)
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
        make_engine(events).halt(lab)
    console.print(f"{lab}: halted")


@app.command()
def destroy(lab: str = LabArg):
    """Destroy the machines and everything vmdock made for them (shared images stay: `vmdock prune`)."""
    events = RichEvents(OPTS.verbose)
    with events:
        removed = make_engine(events).destroy(lab)
    console.print(f"{lab}: destroyed" + (f" ({', '.join(removed)})" if removed else " (nothing was up)"))
    if removed:
        console.print("kept: the machine image and any lab images, shared by every lab on this host "
                      "(`vmdock prune` removes those no machine uses)")


@app.command()
def prune(
    everything: bool = typer.Option(False, "--all", help="the current machine image too"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Remove the shared images (machine images, lab images) no lab on this host uses; say what is kept and why."""
    from ..classroom import Classroom

    rows = Classroom(make_engine()).prune(everything)
    if as_json:
        report = [{"image": r.image, "removed": r.removed, "why": r.why} for r in rows]
        sys.stdout.write(to_json(report))
        return
    for r in rows:
        console.print(("removed " if r.removed else "kept ") + r.image + f": {r.why}", markup=False, highlight=False)
    if not rows:
        console.print("no vmdock image on this host")


