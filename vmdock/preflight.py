"""What `vmdock up` settles before `vagrant up`: the lab instance's seat on this host.

Its private network (a block of the pool, leased host-wide), its port offset,
the machines a killed run left that Vagrant does not know, the forwarded host
ports it needs (each taken one named with its holder), and the network a
provider makes itself.  Pure orchestration over ``seats`` (the logic),
``hostscan`` (the host) and the provider; never prints.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import hostports, seats
from .driver import machine_id
from .hostscan import check_ports, claim_network
from .providers import RUNNING

if TYPE_CHECKING:
    from .labhome import LabHome
    from .model import Machine
    from .providers import Provider
    from .state import LabState


def claim_seat(home: LabHome, state: LabState, offset: int | None,
               image_network: ipaddress.IPv4Network | None = None) -> seats.Seat:
    """The instance's network (leased host-wide, kept in the state) and port offset
    (``offset`` as the settings give it, else the one the state recorded).

    A block is asked for first when free: the one the instance had before destroy, else
    ``image_network`` (the block the lab image it may start from was made on); the steps in a
    lab image ran with those addresses."""
    try:
        before = ipaddress.ip_network(state.network) if state.network else None
    except ValueError:
        before = None
    preferred = before if isinstance(before, ipaddress.IPv4Network) else image_network
    subnet = claim_network(home.instance, home.log, preferred=preferred)
    if state.network != str(subnet):
        state.network = str(subnet)
        state.save()
    return seats.Seat(home.instance, subnet, state.port_offset if offset is None else offset)


def remove_orphans(home: LabHome, provider: Provider, info: Callable[[str], None]) -> None:
    """Remove the instance's machines that Vagrant's state does not know: a run killed inside
    `vagrant up` leaves them (Vagrant's id file still says "preparing"), holding its ports."""
    inst = home.instance
    found = provider.machines(inst, home.log)
    if not found:
        return
    known = [machine_id(home.home, d.name) for d in (home.home / ".vagrant" / "machines").glob("*")]
    lost = seats.orphans(found, inst.id, [k for k in known if k])
    if lost:
        info(f"removing {', '.join(m.name for m in lost)}: machine(s) of this lab that Vagrant did not know "
             "(left by a `vmdock up` stopped inside `vagrant up`)")
        provider.remove(lost, home.log)


def ports(home: LabHome, machines: list[Machine], seat: seats.Seat) -> None:
    """Refuse forwarded host ports of ``machines`` that are taken, naming who holds each."""
    wanted = hostports.effective_ports(machines, seat.port_offset, str(home.loaded.file))
    check_ports(home.instance, wanted, seat.port_offset, home.log)


def before_up(home: LabHome, provider: Provider, seat: seats.Seat, statuses: dict[str, str], recreated: bool) -> None:
    """The ports of the machines `vagrant up` will start (all of them when they are made anew),
    then the instance's network."""
    starting = [m for m in home.loaded.lab.machines if recreated or statuses.get(m.name) != RUNNING]
    if starting:
        ports(home, starting, seat)
        provider.prepare_network(seat, home.log)
