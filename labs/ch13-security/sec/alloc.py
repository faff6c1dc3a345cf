#!/usr/bin/python3
"""13.2 cgroups: allocate memory 10 MB at a time, touching every page, up to N MB.

Under `docker run -m 32m --memory-swap 32m` the kernel's OOM killer stops it at
about 30 MB: the last line it prints is how far it got.
"""
import sys

target = int(sys.argv[1]) if len(sys.argv) > 1 else 200
chunks = []
for mb in range(10, target + 1, 10):
    chunks.append(b"x" * (10 * 1024 * 1024))  # bytes filled with x: every page is written
    print(f"allocated {mb} MB", flush=True)
print(f"done: {target} MB allocated and not killed", flush=True)
