#!/usr/bin/env python3
"""Benchmark a lab's lifecycle with the real `vmdock` command.

    python scripts/bench.py ch6-lamp            # warm: caches as they are
    python scripts/bench.py ch6-lamp --cold     # cold: empty rootfs cache, no machine image

Prints the wall time of: first `up`, the no-op second `up`, `verify`,
`destroy`, as a table and (with --json) as JSON.  Uses its own VMDOCK_HOME
(a temp folder) unless VMDOCK_HOME is set, and the user's cache (VMDOCK_CACHE
or the default); --cold uses an empty cache and removes the machine images first.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def timed(argv: list[str], env: dict) -> tuple[float, int, str]:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.monotonic() - start, proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lab")
    ap.add_argument("--cold", action="store_true", help="start with no rootfs cache and no machine image")
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
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True)
    vmdock = [sys.executable, "-m", "vmdock"]
    subprocess.run(vmdock + ["destroy", args.lab, "--keep-image"], env=env, capture_output=True)

    rows = []
    for name, argv in (
        ("up (first)", ["up", args.lab]),
        ("up (no-op)", ["up", args.lab]),
        ("verify", ["verify", args.lab]),
        ("destroy", ["destroy", args.lab]),
    ):
        seconds, code, out = timed(vmdock + argv, env)
        rows.append({"step": name, "seconds": round(seconds, 1), "exit": code})
        if code != 0:
            sys.stderr.write(out)
            break
    result = {"lab": args.lab, "provider": args.provider, "cold": args.cold, "vmdock_home": env["VMDOCK_HOME"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.lab} ({args.provider}, {'cold' if args.cold else 'warm'} caches)")
        for r in rows:
            print(f"  {r['step']:<12} {r['seconds']:>7.1f}s  exit {r['exit']}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
