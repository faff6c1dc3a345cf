"""Provisioning with Fabric: Docker, the lab base image, the lab's files and steps.

The work is a *plan*: an ordered list of items, each with a fingerprint that
chains the one before it.  Per machine: apt sources → install Docker → write
daemon.json and start the daemon → base image → lab files; these run for all
machines side by side.  Then the lab's own steps, in order, each on its
machines.  An item whose fingerprint is in the state file is skipped, so a
re-run resumes at the first item that failed or changed.  The apt sources are
outside the chain: the mirror is where packages come from, so changing it
rewrites the sources and re-runs nothing else.

The built-in items are ``vmdock.machine_setup``'s; the ``Context`` of a run and
the variables a step gets are ``vmdock.labcontext``'s.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import ProvisionError, VmdockError
from .events import Events
from .labcontext import Context, exports_file, remote_lab_dir, state_lock, step_origin
from .machine_setup import BUILTINS
from .model import Step
from .state import fingerprint, hash_paths
from .transport import Transport


@dataclass
class Item:
    key: str
    machine: str
    title: str
    fingerprint: str
    action: Callable[[Transport], None]
    builtin: bool


def _step_action(ctx: Context, index: int, step: Step, machine: str, last: bool):
    """A lab step on one machine.  ``last``: the step's last machine, where its exports must be complete."""
    key = f"step{index + 1}:{machine}"

    def action(t: Transport) -> None:
        exports = exports_file(index) if step.exports else None
        env = ctx.step_env(machine, exports)
        if exports:
            t.run(f"sudo -n rm -f {exports}", check=False)
        t.run_script(
            step.run,
            env=env,
            cwd=remote_lab_dir(ctx.lab.name),
            name=f"step{index + 1}",
            timeout=step.timeout,
            step=step.name,
            origin=step_origin(ctx.loaded, index),
        )
        if exports:
            # values may be join tokens: read them without logging them, and leave no copy behind
            out = t.run(f"sudo -n sh -c 'cat {exports}; rm -f {exports}'", check=False, secret=True,
                        shown=f"cat {exports}").stdout
            found = {}
            for line in out.splitlines():
                k, sep, v = line.partition("=")
                if sep and k.strip() in step.exports:
                    found[k.strip()] = v.strip()
            with state_lock:
                ctx.state.exports.update(found)
                ctx.state.save()
            # a step on several machines may export a name from any of them
            missing = [n for n in step.exports if n not in ctx.state.exports]
            if last and missing:
                raise ProvisionError(
                    f"the step did not export {', '.join(missing)} (write KEY=value lines to $VMDOCK_EXPORTS)",
                    step=step.name,
                )

    return key, action


def build_plan(ctx: Context, machine_ids: dict[str, str]) -> list[Item]:
    """Every item in order, with chained fingerprints."""
    lab = ctx.lab
    items: list[Item] = []
    tails = []
    for m in lab.machines:
        fp = fingerprint("", ctx.state.provider or "", m.name, machine_ids.get(m.name, ""))
        for short, make in BUILTINS:
            made = make(ctx)
            if made is None:  # does not apply to this lab
                continue
            title, parts, action = made
            if short == "apt":
                # the apt sources chain nothing: a new mirror rewrites them, and installs nothing again
                items.append(Item(f"{m.name}:{short}", m.name, title, fingerprint(fp, short, *parts), action, True))
                continue
            fp = fingerprint(fp, short, *parts)
            items.append(Item(f"{m.name}:{short}", m.name, title, fp, action, True))
            if short not in ("files", "images"):
                machine_fp = fp
        # The lab's steps chain on the machine and its Docker, not on the upload of
        # every lab file (a step re-runs when the files it names change) nor on
        # images loaded from --images-dir (present once, needed by no later `up`).
        tails.append(machine_fp)
    fp = fingerprint("", *tails)
    env_names = json.dumps([sorted(lab.env.items()), lab.secrets, sorted(ctx.ips.items())])
    for i, step in enumerate(lab.steps):
        files = hash_paths(ctx.loaded.folder, step.files) if step.files else ""
        targets = lab.targets(step)
        for machine in targets:
            fp = fingerprint(fp, step.model_dump_json(), files, env_names, machine)
            key, action = _step_action(ctx, i, step, machine, last=machine == targets[-1])
            items.append(Item(key, machine, step.name, fp, action, False))
    return items


def run_plan(
    ctx: Context,
    items: list[Item],
    transports: dict[str, Transport],
    events: Events,
) -> int:
    """Run what is not done yet; return how many items ran."""
    ran = 0

    def run_item(item: Item) -> bool:
        if ctx.state.is_done(item.key, item.fingerprint):
            events.step_done(item.machine, item.key, item.title, 0.0, skipped=True)
            return False
        events.step_start(item.machine, item.key, item.title)
        start = time.monotonic()
        try:
            item.action(transports[item.machine])
        except VmdockError as exc:
            events.step_failed(item.machine, item.key, item.title, time.monotonic() - start)
            raise exc.with_context(  # noqa: B904  (re-raises the caught error itself, with context added)
                lab=ctx.lab.name, machine=item.machine, step=item.title, log=ctx.log.path
            )
        seconds = time.monotonic() - start
        with state_lock:
            ctx.state.mark_done(item.key, item.fingerprint, seconds, f"{item.machine}: {item.title}")
        events.step_done(item.machine, item.key, item.title, seconds, skipped=False)
        return True

    # the built-in items: each machine's chain on its own thread
    builtin = [i for i in items if i.builtin]
    by_machine: dict[str, list[Item]] = {}
    for item in builtin:
        by_machine.setdefault(item.machine, []).append(item)

    def chain(machine_items: list[Item]) -> int:
        return sum(run_item(i) for i in machine_items)

    if by_machine:
        with ThreadPoolExecutor(max_workers=max(1, len(by_machine))) as pool:
            futures = [pool.submit(chain, its) for its in by_machine.values()]
            errors = []
            for f in futures:
                try:
                    ran += f.result()
                except BaseException as exc:  # collect, then raise the first
                    errors.append(exc)
            if errors:
                raise errors[0]
    for item in items:
        if not item.builtin:
            ran += run_item(item)
    return ran
