"""A seat for tests that render a lab without bringing it up (no lease is taken)."""
from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

from vmdock.seats import Instance, Seat

#: only a path: nothing is made there, it names the test instance
SEAT_HOME = Path("/var/tmp/vmdock-test-seat-home")
SEAT_SUBNET = IPv4Network("192.168.56.16/28")


def seat_of(loaded, offset: int = 0) -> Seat:
    return Seat(Instance(SEAT_HOME, loaded.name), SEAT_SUBNET, offset)
