"""Debian mirrors that are a folder of this host (``file://``): a classroom
copies a mirror onto a disk and sets ``VMDOCK_APT_MIRROR=file:///media/debian``.

* debootstrap (the rootfs, the box) reads the folder itself;
* ``docker build`` of the machine image gets it over HTTP on 127.0.0.1
  (``served``): the build runs with ``--network=host``;
* docker-provider machines get the folder mounted read-only at the same path
  (``mounts``), so the ``file:`` URL works in them as on the host;
* virtual machines (libvirt, VirtualBox) cannot read a host folder:
  ``refuse_for_vms`` says so and what to do instead.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError
from ..runlog import Log
from ..settings import file_url_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def served(mirror: str, log: Log) -> Iterator[str]:
    """``mirror`` as a URL a ``--network=host`` container can fetch from.

    An http(s) mirror is itself; a ``file:`` mirror is served over HTTP on
    127.0.0.1 (a free port) while the block runs.
    """
    folder = file_url_path(mirror)
    if folder is None:
        yield mirror
        return
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="vmdock-mirror", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    log.event(f"serving the mirror {folder} at {url} for the build")
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def mounts(*mirrors: str | None) -> list[str]:
    """``docker create`` args that mount the folders of ``file:`` mirrors read-only."""
    args: list[str] = []
    for folder in dict.fromkeys(file_url_path(m) for m in mirrors):
        if folder is not None:
            args += ["-v", f"{folder}:{folder}:ro"]
    return args


def refuse_for_vms(provider: str, **mirrors: str | None) -> None:
    """A ConfigError when a mirror a virtual machine needs is a folder of this host.

    ``mirrors``: variable name → URL, e.g. ``VMDOCK_APT_MIRROR=...``.
    """
    for variable, url in mirrors.items():
        folder = file_url_path(url)
        if folder is not None:
            raise ConfigError(
                f"{variable}: {url} is a folder of this host, which {provider} machines cannot read",
                hint=f"serve it over HTTP (e.g. `python3 -m http.server 8000 -d {folder}`) and set {variable} "
                "to http://<this host's address on the machines' network>:8000, or use the docker "
                "provider (it mounts the folder into the machines)",
            )
