"""Lab model → Vagrantfile (Ruby), through ``Vagrantfile.j2``.

Every value reaches the template wrapped by the ``ruby`` filter; the Jinja
environment refuses to print anything else, so a raw YAML value can never be
pasted into Ruby by mistake.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, paths, providers
from .errors import LabError
from .ruby import ruby

if TYPE_CHECKING:
    import jinja2

    from .loader import LoadedLab
    from .providers import Provider

# VirtualBox (6.1.28+) allows host-only networks in 192.168.56.0/21 only.
# Each lab gets a /28 of it by chapter: 13 machines at most (one address is the
# gateway), no clash between labs.
NETWORK_POOL = ipaddress.ip_network("192.168.56.0/21")
LAB_PREFIX = 28


class RubyLiteral(str):
    """A string that is already a Ruby literal."""


def _finalize(value):
    if isinstance(value, RubyLiteral):
        return value
    raise TypeError(f"template printed {value!r} without the `ruby` filter")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2  # only render needs it: `vmdock list` and `status` stay quick

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.VAGRANTFILE_TEMPLATE.parent)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["ruby"] = lambda v: RubyLiteral(ruby(v))
    return env


@lru_cache(maxsize=1)
def boxes_catalog() -> dict:
    import yaml

    with open(paths.BOXES_DIR / "boxes.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def lab_network(chapter: int) -> ipaddress.IPv4Network:
    blocks: list[ipaddress.IPv4Network] = list(NETWORK_POOL.subnets(new_prefix=LAB_PREFIX))  # type: ignore[arg-type]
    return blocks[chapter % len(blocks)]


def machine_ips(loaded: LoadedLab) -> dict[str, str]:
    net = lab_network(loaded.lab.chapter)
    hosts = list(net.hosts())[1:]  # the first address is the gateway
    if len(loaded.lab.machines) > len(hosts):
        raise LabError(
            f"{loaded.file}: machines: at most {len(hosts)} machines fit a lab's network",
            lab=loaded.name,
        )
    return {m.name: str(hosts[i]) for i, m in enumerate(loaded.lab.machines)}


def container_name(lab: str, machine: str) -> str:
    return f"vmdock-{lab}-{machine}"


def _box(loaded: LoadedLab, machine, provider: Provider) -> tuple[str | None, str | None]:
    if not provider.uses_boxes:
        return None, None
    entry = boxes_catalog().get(machine.box)
    where = f"{loaded.file}: machines[{loaded.lab.machines.index(machine)}].box"
    if entry is None:
        raise LabError(f"{where}: unknown box {machine.box!r} (boxes: {', '.join(boxes_catalog())})", lab=loaded.name)
    url = os.environ.get("VMDOCK_BOX_URL_" + re.sub(r"[^A-Z0-9]", "_", machine.box.upper()))
    # a box built by `vmdock box build` and registered with Vagrant, unless the URL says otherwise
    box = entry.get(provider.name) if url else provider.box(entry)
    if not box:
        raise LabError(f"{where}: box {machine.box!r} has no {provider.name} version", lab=loaded.name)
    return box, url or None


@dataclass(frozen=True)
class RenderOptions:
    """The provider's name and what its ``render_options`` gave (its template block's values)."""

    provider: str
    values: dict = field(default_factory=dict)


def render(loaded: LoadedLab, opts: RenderOptions) -> str:
    provider = providers.get(opts.provider)
    provider.check_options(opts.values)
    lab = loaded.lab
    ips = machine_ips(loaded)
    machines = []
    for m in lab.machines:
        box, box_url = _box(loaded, m, provider)
        machines.append(
            {
                "name": m.name,
                "hostname": m.hostname or f"{lab.name}-{m.name}"[:63].rstrip("-"),
                # Under emulation a hostname change costs a guest round trip; containers get it free.
                "set_hostname": provider.default_hostname or m.hostname is not None,
                "box": box,
                "box_url": box_url,
                "ip": ips[m.name],
                "cpus": m.cpus,
                "memory": m.memory,
                "forwarded_ports": [p.model_dump() for p in m.forwarded_ports],
                "synced_folder": m.synced_folder,
                "lab_folder": str(loaded.folder),
                "container": container_name(lab.name, m.name),
                "prefix": f"vmdock-{lab.name}-",
                "labels": ["--label", f"vmdock.lab={lab.name}", "--label", f"vmdock.machine={m.name}"],
            }
        )
    net = lab_network(lab.chapter)
    return _environment().get_template(paths.VAGRANTFILE_TEMPLATE.name).render(
        version=__version__,
        lab_name=lab.name,
        lab_file=str(loaded.file),
        provider=provider.name,
        machines=machines,
        netmask=provider.netmask(net),
        options=opts.values,
    )


def write_atomic(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically; return False when it was already so."""
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True
