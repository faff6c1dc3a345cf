"""Lab model → Vagrantfile (Ruby), through ``Vagrantfile.j2``.

Every value reaches the template wrapped by the ``ruby`` filter; the Jinja
environment refuses to print anything else, so a raw YAML value can never be
pasted into Ruby by mistake.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, hostports, paths, providers, seats, settings
from .errors import LabError
from .ruby import ruby

if TYPE_CHECKING:
    import jinja2

    from .loader import LoadedLab
    from .providers import Provider
    from .seats import Seat


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
        catalog: dict = yaml.safe_load(fh)
    return catalog


def machine_ips(loaded: LoadedLab, subnet: ipaddress.IPv4Network) -> dict[str, str]:
    """Machine → address in the instance's private network (``seats``: leased per instance)."""
    try:
        return seats.machine_ips(subnet, [m.name for m in loaded.lab.machines])
    except ValueError as exc:
        raise LabError(f"{loaded.file}: machines: {exc}", lab=loaded.name) from None


def _box(loaded: LoadedLab, machine, provider: Provider) -> tuple[str | None, str | None]:
    if not provider.uses_boxes:
        return None, None
    entry = boxes_catalog().get(machine.box)
    where = f"{loaded.file}: machines[{loaded.lab.machines.index(machine)}].box"
    if entry is None:
        raise LabError(f"{where}: unknown box {machine.box!r} (boxes: {', '.join(boxes_catalog())})", lab=loaded.name)
    url = settings.current().box_url(machine.box)
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


def render(loaded: LoadedLab, opts: RenderOptions, seat: Seat) -> str:
    """The Vagrantfile of ``loaded`` for one seat: its names, its network, its host ports."""
    provider = providers.get(opts.provider)
    provider.check_options(opts.values)
    lab = loaded.lab
    inst = seat.instance
    ips = machine_ips(loaded, seat.subnet)
    ports = hostports.effective_ports(lab.machines, seat.port_offset, where=str(loaded.file))
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
                "forwarded_ports": [
                    {"guest": p.guest, "host": p.host, "host_ip": p.host_ip, "protocol": p.protocol}
                    for p in ports if p.machine == m.name
                ],
                "synced_folder": m.synced_folder,
                "lab_folder": str(loaded.folder),
                "container": inst.machine_name(m.name),
                "prefix": inst.prefix,
                "labels": seats.label_args(inst.labels(m.name)),
            }
        )
    return _environment().get_template(paths.VAGRANTFILE_TEMPLATE.name).render(
        version=__version__,
        lab_name=lab.name,
        lab_file=str(loaded.file),
        provider=provider.name,
        machines=machines,
        netmask=provider.netmask(seat.subnet),
        network_name=inst.network_name,
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
