"""Host commands: doctor, config, lab images, base boxes, offline bundles."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import (
    EXIT_INFRASTRUCTURE,
)
from ..settings import Settings
from .common import (
    OPTS,
    LabArg,
    RichEvents,
    app,
    complete_lab,
    console,
    make_engine,
    resolve_lab,
    shown,
    to_json,
)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")):
    """Is this host ready? vagrant, providers, dockerd, KVM, free RAM and disk."""
    from ..doctor import run_doctor

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
    provider: str | None = typer.Option(None, "--provider", help="as `vmdock up --provider`"),
    images_dir: Path | None = typer.Option(None, "--images-dir", help="as `vmdock up --images-dir`"),
):
    """Every setting (VMDOCK_* variables, options): its effective value and where it came from."""
    from .. import paths, settings

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
        shown = "-" if value in (None, [], {}) else (
            json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
        )
        origin = f"option {r['option']}" if r["source"] == "option" else r["source"]
        table.add_row(escape(r["variable"]), escape(shown), origin)
    console.print(table)


# -- lab images -------------------------------------------------------------------

image_app = typer.Typer(
    no_args_is_help=True, help="Lab images: a lab's machines after its steps, to start `up` and `reset` from."
)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    lab: str = LabArg,
    no_steps: bool = typer.Option(False, "--no-steps", help="the student-mode lab (no steps; its checks are not run)"),
):
    """Bring the lab up if needed, verify it, and capture each machine as a lab image."""
    from ..classroom import Classroom

    events = RichEvents(OPTS.verbose)
    start = time.monotonic()
    with events:
        made = Classroom(make_engine(events)).build_image(lab, no_steps=no_steps)
    console.print(
        f"[green]{len(made)} lab image(s)[/] in {time.monotonic() - start:.0f}s: " + ", ".join(i.tag for i in made),
        highlight=False,
    )


@image_app.command("list")
def image_list(as_json: bool = typer.Option(False, "--json")):
    """Every lab image on this host: lab, provider, machine, size, fingerprint, built when."""
    from ..classroom import Classroom

    rows: list[dict[str, Any]] = [
        {"lab": i.lab, "provider": i.provider, "machine": i.machine, "image": i.tag, "size": i.size,
         "fingerprint": i.fingerprint, "steps": len(i.steps), "built_at": i.built_at, "vmdock": i.version}
        for i in Classroom(make_engine()).list_images()
    ]
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

box_app = typer.Typer(
    no_args_is_help=True, help="Base boxes: build vmdock's own (offline, from the Debian mirror), list them."
)
app.add_typer(box_app, name="box")


@box_app.command("build")
def box_build(
    provider: str = typer.Option("libvirt", "--provider", help="libvirt (a Vagrant box) or docker (the machine image)"),
    box: str = typer.Option("debian12", "--box", help="a box of boxes/boxes.yaml"),
    force: bool = typer.Option(False, "--force", help="build anew even when cached, and register again"),
):
    """Build a base box from the Debian mirror (VMDOCK_APT_MIRROR) and register it with Vagrant."""
    from .. import paths
    from ..hostbuild import box_image
    from ..runlog import Log

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
    from ..hostbuild import boxes

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
        overridden = r["url_override"] and r["provider"] != "docker"
        uses = (r["uses"] or "-") + (f" from {r['url_override']}" if overridden else "")
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
        ..., help="labs to carry (names, chapters or numbers)", autocompletion=complete_lab
    ),
    images_dir: Path | None = typer.Option(
        None, "--images-dir", help="folder of `docker save` tarballs for online labs (also VMDOCK_IMAGES_DIR)"
    ),
    level: int = typer.Option(3, "--level", min=1, max=19, help="zstd level (3: fast to unpack, measured)"),
):
    """Write the machine image, lab images, rootfs, boxes and needed image tarballs of LABS into FILE."""
    from .. import bundle

    loaded = [resolve_lab(name) for name in dict.fromkeys(labs)]
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
    from .. import bundle

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
    from .. import bundle

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
