"""Seats: instance ids, subnet leases, forwarded-port preflight and offset, orphans."""
from __future__ import annotations

import ipaddress
import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest

from vmdock import hostports, seats
from vmdock.errors import BusyError, LabError, StateError
from vmdock.model import ForwardedPort, Machine

N = ipaddress.ip_network


@pytest.fixture
def host_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "host"
    monkeypatch.setenv("VMDOCK_HOST_DIR", str(d))
    return d


def test_instance_id_is_short_stable_and_differs_per_home_and_lab(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ida = seats.instance_id(a, "ch2-containers")
    assert len(ida) == 6 and int(ida, 16) >= 0
    assert ida == seats.instance_id(a, "ch2-containers")
    assert ida == seats.instance_id(tmp_path / "b" / ".." / "a", "ch2-containers")  # realpath
    os.symlink(a, tmp_path / "link")
    assert ida == seats.instance_id(tmp_path / "link", "ch2-containers")
    assert ida != seats.instance_id(b, "ch2-containers")
    assert ida != seats.instance_id(a, "ch6-lamp")


def test_every_name_carries_the_instance_id(tmp_path):
    inst = seats.Instance(tmp_path, "ch2-containers")
    assert inst.machine_name("docker") == f"vmdock-{inst.id}-ch2-containers-docker"
    assert inst.machine_name("docker").startswith(inst.prefix)
    assert inst.network_name == f"vmdock-{inst.id}-ch2-containers"
    assert inst.labels("docker") == {
        "vmdock.instance": inst.id,
        "vmdock.home": str(tmp_path),
        "vmdock.lab": "ch2-containers",
        "vmdock.machine": "docker",
    }
    assert seats.label_args({"a": "1", "b": "x y"}) == ["--label", "a=1", "--label", "b=x y"]


def test_free_block_skips_every_overlap():
    blocks = seats.pool_blocks()
    assert len(blocks) == 128 and all(b.subnet_of(seats.NETWORK_POOL) for b in blocks)
    assert seats.free_block([]) == N("192.168.56.0/28")
    assert seats.free_block([N("192.168.56.0/27")]) == N("192.168.56.32/28")
    assert seats.free_block([N("192.168.56.5/32"), N("192.168.56.16/28")]) == N("192.168.56.32/28")
    assert seats.free_block([N("0.0.0.0/0")]) == N("192.168.56.0/28")  # a default route is no network
    assert seats.free_block([N("192.168.0.0/16")]) is None


def test_machine_ips_leave_the_gateway_and_refuse_too_many():
    assert seats.machine_ips(N("192.168.56.16/28"), ["a", "b"]) == {"a": "192.168.56.18", "b": "192.168.56.19"}
    with pytest.raises(ValueError, match="at most 13"):
        seats.machine_ips(N("192.168.56.16/28"), [str(i) for i in range(14)])


def _lab_folder(home: Path, lab: str) -> None:
    (home / "labs" / lab).mkdir(parents=True, exist_ok=True)


def test_allocation_keeps_a_lease_and_avoids_host_networks_and_other_instances(tmp_path, host_dir):
    h1, h2 = tmp_path / "h1", tmp_path / "h2"
    for h in (h1, h2):
        _lab_folder(h, "ch2-containers")
    host = [(N("192.168.56.0/28"), "docker network x"), (N("192.168.56.20/30"), "interface br0")]
    one = seats.Instance(h1, "ch2-containers")
    two = seats.Instance(h2, "ch2-containers")
    with seats.host_lock("test"):
        a = seats.allocate_subnet(one, lambda: host)
        b = seats.allocate_subnet(two, lambda: host)
    assert a == N("192.168.56.32/28") and b == N("192.168.56.48/28")
    # asked again, each keeps its block, whatever the host has now
    assert seats.allocate_subnet(one, lambda: [(a, "its own bridge")]) == a
    leases = {lease.instance: lease for lease in seats.read_leases(host_dir / "subnets")}
    assert leases[one.id].home == str(h1) and leases[two.id].subnet == b
    assert seats.release_subnet(one) == [a]
    assert seats.allocate_subnet(seats.Instance(h1, "ch6-lamp"), lambda: host) == a


def test_a_seat_gets_its_former_block_back_when_it_is_free(tmp_path, host_dir):
    h1, h2 = tmp_path / "h1", tmp_path / "h2"
    for h in (h1, h2):
        _lab_folder(h, "ch6-lamp")
    one, two = seats.Instance(h1, "ch6-lamp"), seats.Instance(h2, "ch6-lamp")
    with seats.host_lock("test"):
        first = seats.allocate_subnet(one, list)
        seats.release_subnet(one)
        taken = seats.allocate_subnet(two, list)  # another seat came meanwhile and took the first free block
        assert taken == first
        again = seats.allocate_subnet(one, list, preferred=first)
        assert again != first  # taken: the first free one instead
        seats.release_subnet(one)
        seats.release_subnet(two)
        assert seats.allocate_subnet(one, list, preferred=again) == again  # free: its own again, not the first
        assert seats.allocate_subnet(two, list, preferred=N("10.0.0.0/28")) == first  # outside the pool: ignored


def test_a_stale_lease_is_taken_back_and_an_unreadable_one_still_holds(tmp_path, host_dir):
    gone = seats.Instance(tmp_path / "deleted-home", "ch2-containers")
    with seats.host_lock("test"):
        assert seats.allocate_subnet(gone, list) == N("192.168.56.0/28")
    (host_dir / "subnets" / "192.168.56.16_28.json").write_text("{half a lea")
    _lab_folder(tmp_path / "h", "x")
    new = seats.Instance(tmp_path / "h", "x")
    assert seats.allocate_subnet(new, list) == N("192.168.56.0/28")  # the deleted home's block
    assert seats.allocate_subnet(seats.Instance(tmp_path / "h", "y"), list) == N("192.168.56.32/28")


def test_pool_exhausted_says_how_to_free_it(tmp_path, host_dir):
    _lab_folder(tmp_path, "x")
    with pytest.raises(StateError, match="no free /28") as err:
        seats.allocate_subnet(seats.Instance(tmp_path, "x"), lambda: [(N("192.168.56.0/21"), "vpn")])
    assert "status --all" in err.value.hint


def _allocate_in_child(home: str, lab: str, out) -> None:
    with seats.host_lock("test"):
        out.put(str(seats.allocate_subnet(seats.Instance(Path(home), lab), list)))


def test_two_processes_allocating_at_once_get_different_blocks(tmp_path, host_dir):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = []
    for i in range(4):
        _lab_folder(tmp_path / f"h{i}", "ch2-containers")
        procs.append(ctx.Process(target=_allocate_in_child, args=(str(tmp_path / f"h{i}"), "ch2-containers", out)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    got = [out.get(timeout=5) for _ in procs]
    assert len(set(got)) == 4
    assert oct((host_dir / "seats.lock").stat().st_mode & 0o777) == oct(0o666)  # every user's vmdock may lock
    assert (host_dir.stat().st_mode & 0o7777) == 0o1777


def test_host_lock_times_out_with_a_clear_error(host_dir):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()

    def hold():
        with seats.host_lock("holder"):
            ready.set()
            done.wait(30)

    p = ctx.Process(target=hold)
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(BusyError, match="another vmdock on this host"), seats.host_lock("test", timeout=0.3):
            pass
    finally:
        done.set()
        p.join(10)


# -- ports ------------------------------------------------------------------------------


def _machines(*ports: tuple[str, int, int]) -> list[Machine]:
    by: dict[str, list] = {}
    for m, guest, host in ports:
        by.setdefault(m, []).append(ForwardedPort(guest=guest, host=host))
    return [Machine(name=m, forwarded_ports=p) for m, p in by.items()]


def test_the_offset_moves_every_port_as_a_block():
    ms = _machines(("web", 80, 8060), ("web", 443, 8061), ("db", 3306, 8062))
    ports = hostports.effective_ports(ms, 100)
    assert [(p.machine, p.guest, p.host) for p in ports] == [("web", 80, 8160), ("web", 443, 8161), ("db", 3306, 8162)]
    assert str(ports[0]) == "127.0.0.1:8160/tcp (→ web:80)"
    with pytest.raises(LabError, match=r"machines\[0\]\.forwarded_ports\[1\]\.host: 8061 \+ port offset 57475"):
        hostports.effective_ports(ms, 57475, where="labs/x/lab.yaml")


def test_port_free_sees_a_real_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert hostports.port_free("127.0.0.1", port) == (False, "in use")
    assert hostports.port_free("127.0.0.1", port) == (True, "")
    free, why = hostports.port_free("192.0.2.123", port)  # TEST-NET: never an address of this host
    assert not free and "not an address of this host" in why


def test_docker_ports_column():
    text = "127.0.0.1:2222->22/tcp, 0.0.0.0:8020-8021->8080-8081/tcp, :::9000->9000/udp, 22/tcp"
    assert hostports.parse_docker_ports(text) == [
        ("127.0.0.1", 2222, "tcp"), ("0.0.0.0", 8020, "tcp"), ("0.0.0.0", 8021, "tcp"), ("::", 9000, "udp"),
    ]


def test_taken_ports_name_their_holder_and_skip_the_instance_own():
    ports = hostports.effective_ports(_machines(("web", 80, 8060), ("web", 81, 8061), ("web", 82, 8062)), 0)
    holders = {
        ("127.0.0.1", 8060, "tcp"): hostports.PortHolder(
            "abc123", "ch6-lamp", "/home/ann/.local/share/vmdock", "vmdock-abc123-ch6-lamp-web"
        ),
        ("0.0.0.0", 8061, "tcp"): hostports.PortHolder("mine00", "x", "/h", "vmdock-mine00-x-web"),
    }
    busy = {8060, 8061, 8062}
    taken = hostports.taken_ports(ports, holders, "mine00", is_free=lambda ip, p, proto: (p not in busy, "in use"))
    assert [t.port.host for t in taken] == [8060, 8062]
    assert taken[0].describe() == (
        "web: host port 127.0.0.1:8060 is in use, held by vmdock lab ch6-lamp of /home/ann/.local/share/vmdock "
        "(instance abc123, container vmdock-abc123-ch6-lamp-web)"
    )
    assert taken[1].describe().endswith("held by a process on this host")
    legacy = hostports.PortHolder("", "ch6-lamp", "", "vmdock-ch6-lamp-web")
    assert "without instance ids" in legacy.describe()
    assert hostports.PortHolder("", "", "", "nginx").describe() == "docker container nginx"


def test_suggested_offset_frees_every_port_and_the_error_says_so():
    ports = hostports.effective_ports(_machines(("web", 80, 8060), ("web", 81, 8061)), 0)
    busy = {8060, 8161}
    assert hostports.suggest_offset(ports, 0, is_free=lambda ip, p, proto: (p not in busy, "")) == 200
    taken = hostports.taken_ports(ports, {}, "x", is_free=lambda ip, p, proto: (p not in busy, "in use"))
    err = hostports.ports_taken_error("ch6-lamp", taken, 0, 200)
    assert isinstance(err, hostports.PortsTaken) and isinstance(err, StateError)
    assert "1 forwarded host port(s) taken (port offset 0)" in err.message and "8060" in err.message
    assert err.hint.endswith("--port-offset 200 frees them all")


# -- orphans ------------------------------------------------------------------------------


def test_orphans_are_the_instance_machines_vagrant_does_not_know():
    def mk(cid: str, inst: str) -> seats.Machine:
        return seats.Machine("docker", cid, f"vmdock-{inst}-x-m", inst, "x", "/h", "m", "running")

    found = [mk("c1", "aaaaaa"), mk("c2", "aaaaaa"), mk("c3", "bbbbbb")]
    assert [m.id for m in seats.orphans(found, "aaaaaa", ["c1", ""])] == ["c2"]
    assert seats.orphans(found, "cccccc", ["c1"]) == []


def test_lease_files_are_json_named_by_block(tmp_path, host_dir):
    _lab_folder(tmp_path, "x")
    inst = seats.Instance(tmp_path, "x")
    block = seats.allocate_subnet(inst, list)
    data = json.loads((host_dir / "subnets" / "192.168.56.0_28.json").read_text())
    assert data == {"instance": inst.id, "home": str(tmp_path), "lab": "x"} and block == N("192.168.56.0/28")


def test_a_lab_outside_the_book_needs_no_chapter(tmp_path):
    from vmdock.loader import load_lab

    folder = tmp_path / "my-lamp"
    folder.mkdir()
    (folder / "lab.yaml").write_text("name: my-lamp\ntitle: a teacher's own lab\nmachines: [{name: web}]\n")
    assert load_lab(folder).lab.chapter is None
