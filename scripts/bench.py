#!/usr/bin/env python3
"""Benchmark a lab's lifecycle with the real `vmdock` command.

    python scripts/bench.py ch6-lamp              # warm: caches as they are
    python scripts/bench.py ch6-lamp --cold       # cold: empty rootfs cache, no machine image
    python scripts/bench.py ch2-containers --fast-paths
    python scripts/bench.py ch6-lamp --lab-image [--offline-bundle]

The default mode prints the wall time of: first `up`, the no-op second `up`,
`verify`, `destroy`.  ``--fast-paths`` brings the lab up (untimed), then times
the commands that must be quick, each run ``--repeat`` times (best and
median): the no-op `up`, `list`, `status`, `status --refresh`, `render`, and
last `destroy`, each printed with its command line.  ``--lab-image`` brings
the lab up (untimed), then times `image build` of the lab that is up,
`destroy` (the image stays), `up` from the lab image, `verify`, `reset`,
`verify`, `destroy`; with ``--offline-bundle`` then `bundle export`, the
lab image removed, `bundle import`, `up` with an apt mirror that does not
answer, `verify`, `destroy`.  Uses its own VMDOCK_HOME
(a temp folder) unless VMDOCK_HOME is set, and the user's cache (VMDOCK_CACHE
or the default); --cold uses an empty cache and removes the machine images first.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

#: the fast paths and their targets in seconds (None: measured, no target)
FAST_PATHS: list[tuple[str, list[str], float | None]] = [
    ("up (no-op)", ["up", "{lab}"], 1.0),
    ("list", ["list"], 0.3),
    ("status", ["status", "{lab}"], 0.5),
    ("status --refresh", ["status", "{lab}", "--refresh"], None),
    ("render", ["render", "{lab}"], None),
]


def timed(argv: list[str], env: dict) -> tuple[float, int, str]:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return time.monotonic() - start, proc.returncode, proc.stdout + proc.stderr


def lifecycle(vmdock: list[str], lab: str, env: dict) -> list[dict]:
    rows = []
    for name, argv in (
        ("up (first)", ["up", lab]),
        ("up (no-op)", ["up", lab]),
        ("verify", ["verify", lab]),
        ("destroy", ["destroy", lab]),
    ):
        seconds, code, out = timed(vmdock + argv, env)
        rows.append({"step": name, "command": "vmdock " + shlex.join(argv), "seconds": round(seconds, 2), "exit": code})
        if code != 0:
            sys.stderr.write(out)
            break
    return rows


#: the lab image's path and its targets in seconds
LAB_IMAGE: list[tuple[str, list[str], float | None]] = [
    ("image build (lab up)", ["image", "build", "{lab}"], 60.0),
    ("destroy", ["destroy", "{lab}"], 5.0),
    ("up (from lab image)", ["up", "{lab}"], 20.0),
    ("verify", ["verify", "{lab}"], None),
    ("reset", ["reset", "{lab}"], 10.0),
    ("verify (after reset)", ["verify", "{lab}"], None),
    ("destroy", ["destroy", "{lab}"], 5.0),
]


def up_first(vmdock: list[str], lab: str, env: dict) -> list[dict]:
    """`vmdock up LAB`, which the measured commands start from: [] when it worked, else its row."""
    seconds, code, out = timed(vmdock + ["up", lab], env)
    if code == 0:
        return []
    sys.stderr.write(out)
    return [{"step": "up (to start from)", "command": f"vmdock up {lab}", "seconds": round(seconds, 2), "exit": code}]


#: then the lab carried in a bundle to a home with no lab image and an apt mirror that does not answer
CLOSED_MIRROR = "http://127.0.0.1:9/debian"
OFFLINE: list[tuple[str, list[str], float | None]] = [
    ("bundle export", ["bundle", "export", "{bundle}", "{lab}"], None),
    ("bundle import", ["bundle", "import", "{bundle}"], 60.0),
    ("up (offline)", ["up", "{lab}"], 20.0),
    ("verify (offline)", ["verify", "{lab}"], None),
    ("destroy", ["destroy", "{lab}"], 5.0),
]


def run_rows(vmdock: list[str], steps: list, env: dict, rows: list[dict], **values) -> bool:
    """Time each step into ``rows``; False at the first that fails (its output goes to stderr)."""
    for name, template, target in steps:
        argv = [a.format(**values) for a in template]
        if name == "bundle import":  # the student's host: the lab image is not there yet
            remove_lab_images(values["lab"])
        where = env if not name.endswith("(offline)") else dict(env, VMDOCK_APT_MIRROR=CLOSED_MIRROR)
        seconds, code, out = timed(vmdock + argv, where)
        row = {"step": name, "command": "vmdock " + shlex.join(argv), "seconds": round(seconds, 2),
               "target": target, "exit": code}
        if name == "bundle export" and code == 0:
            row["step"] = f"bundle export ({os.path.getsize(values['bundle']) / 1e6:.0f} MB)"
        rows.append(row)
        if code != 0:
            sys.stderr.write(out)
            return False
    return True


def remove_lab_images(lab: str) -> None:
    ids = subprocess.run(["docker", "images", "-q", "--filter", "label=vmdock.role=lab-image",
                          "--filter", f"label=vmdock.lab={lab}"], capture_output=True, text=True, check=False)
    if ids.stdout.split():
        subprocess.run(["docker", "rmi", "-f", *dict.fromkeys(ids.stdout.split())], capture_output=True, check=False)


def lab_image(vmdock: list[str], lab: str, env: dict, offline: bool) -> list[dict]:
    failed = up_first(vmdock, lab, env)
    if failed:
        return failed
    rows: list[dict] = []
    if run_rows(vmdock, LAB_IMAGE, env, rows, lab=lab) and offline:
        with tempfile.TemporaryDirectory(prefix="vmdock-bench-bundle-") as tmp:
            run_rows(vmdock, OFFLINE, env, rows, lab=lab, bundle=os.path.join(tmp, "class.vmdock"))
    return rows


def fast_paths(vmdock: list[str], lab: str, env: dict, repeat: int) -> list[dict]:
    failed = up_first(vmdock, lab, env)
    if failed:
        return failed
    rows = []
    for name, template, target in FAST_PATHS + [("destroy", ["destroy", "{lab}"], 5.0)]:
        argv = [a.format(lab=lab) for a in template]
        runs = []
        code = 0
        for _ in range(1 if name == "destroy" else repeat):
            seconds, code, out = timed(vmdock + argv, env)
            runs.append(seconds)
            if code != 0:
                sys.stderr.write(out)
                break
        rows.append({
            "step": name,
            "command": "vmdock " + shlex.join(argv),
            "seconds": round(min(runs), 2),
            "median": round(statistics.median(runs), 2),
            "target": target,
            "exit": code,
        })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lab")
    ap.add_argument("--cold", action="store_true", help="start with no rootfs cache and no machine image")
    ap.add_argument("--fast-paths", action="store_true", help="time the commands that must be quick")
    ap.add_argument("--lab-image", action="store_true", help="time image build, up from the image, reset")
    ap.add_argument("--offline-bundle", action="store_true",
                    help="with --lab-image: then bundle export, the lab image removed, import, "
                         f"`up` with VMDOCK_APT_MIRROR={CLOSED_MIRROR}, verify")
    ap.add_argument("--repeat", type=int, default=5, help="runs per fast path (best and median are shown)")
    ap.add_argument("--provider", default=os.environ.get("VMDOCK_PROVIDER", "docker"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    env = dict(os.environ, VMDOCK_PROVIDER=args.provider, COLUMNS="160")
    if "VMDOCK_CACHE" not in env:  # warm runs share the user's cache, whatever home the bench uses
        from vmdock import paths

        env["VMDOCK_CACHE"] = str(paths.cache_dir())
    env.setdefault("VMDOCK_HOME", tempfile.mkdtemp(prefix="vmdock-bench-"))
    if args.cold:
        env["VMDOCK_CACHE"] = tempfile.mkdtemp(prefix="vmdock-bench-cache-")
        ids = subprocess.run(["docker", "images", "-q", "--filter", "label=vmdock.role=machine-image"],
                             capture_output=True, text=True, check=False).stdout.split()
        if ids:
            subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True, check=False)
    vmdock = [sys.executable, "-m", "vmdock"]
    if args.fast_paths:
        rows = fast_paths(vmdock, args.lab, env, args.repeat)
    elif args.lab_image:
        rows = lab_image(vmdock, args.lab, env, args.offline_bundle)
    else:
        subprocess.run(vmdock + ["destroy", args.lab], env=env, capture_output=True, check=False)
        rows = lifecycle(vmdock, args.lab, env)
    mode = ("fast paths" if args.fast_paths else "lab image" if args.lab_image
            else ("cold" if args.cold else "warm") + " caches")
    result = {"lab": args.lab, "provider": args.provider, "mode": mode, "vmdock_home": env["VMDOCK_HOME"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.lab} ({args.provider}, {mode}; load average {os.getloadavg()[0]:.1f})")
        for r in rows:
            extra = f"  median {r['median']:.2f}s" if "median" in r else ""
            target = f"  target ≤ {r['target']:.1f}s" if r.get("target") else ""
            print(f"  {r['step']:<18} {r['seconds']:>7.2f}s{extra}{target}  exit {r['exit']}   $ {r['command']}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
