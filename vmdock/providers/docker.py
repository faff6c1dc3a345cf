"""The docker provider: machines are containers running sshd and their own dockerd.

They boot from vmdock's machine image (built offline by ``vmdock.images``),
not from a Vagrant box.  A container's settings are fixed when it is created,
so changed machine settings recreate it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProviderError
from .base import (
    NOT_CREATED,
    RUNNING,
    Probe,
    Provider,
    Pruned,
    Removal,
    quick_run,
    unix_socket_answers,
)

if TYPE_CHECKING:
    from ..driver import SshConfig
    from ..events import Events
    from ..labimages import LabImage
    from ..loader import LoadedLab
    from ..runlog import Log
    from ..seats import Instance, Machine, Seat

#: the labels vmdock's Vagrantfile puts on every machine container
INSTANCE_LABEL = "vmdock.instance"
#: how long `remove` waits for dockerd to let go of a container a killed `docker run` was making
REMOVE_TIMEOUT = 120.0
LAB_LABEL = "vmdock.lab"
MACHINE_LABEL = "vmdock.machine"


def docker_daemon() -> tuple[bool, str]:
    """Whether dockerd answers on $DOCKER_HOST (a Unix socket): (answers, detail)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True, f"DOCKER_HOST={host} (not probed)"
    ok, detail = unix_socket_answers(host[len("unix://"):], b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    if ok and " 200 " not in detail + " ":
        return False, f"dockerd answered {detail!r}"
    return ok, "dockerd answers" if ok else detail


def container_states(ps_lines: str) -> dict[str, str]:
    """``docker ps -a`` lines ``<machine label>\\t<State>`` → machine → Vagrant state."""
    out: dict[str, str] = {}
    for line in ps_lines.splitlines():
        machine, sep, state = line.partition("\t")
        if not sep or not machine:
            continue
        # Vagrant's docker provider: running when `docker ps` lists it, else stopped
        out[machine] = RUNNING if state.strip() in ("running", "restarting") else "stopped"
    return out


def ssh_address(ports_json: str) -> tuple[str, int] | None:
    """``docker inspect -f '{{json .NetworkSettings.Ports}}'`` → where port 22 is published."""
    try:
        ssh = (json.loads(ports_json or "null") or {}).get("22/tcp") or []
    except ValueError:
        return None
    if not ssh or not str(ssh[0].get("HostPort", "")).isdigit():
        return None
    host = ssh[0].get("HostIp") or "127.0.0.1"
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(ssh[0]["HostPort"])


def _mirrors() -> tuple[str | None, ...]:
    """The apt mirrors a machine may need mounted (``file:`` ones are folders of this host)."""
    from .. import settings

    current = settings.current()
    return current.apt_mirror, current.apt_security_mirror


class DockerProvider(Provider):
    name = "docker"
    on_settings_changed = "recreate"
    default_hostname = True
    uses_boxes = False
    supports_lab_images = True

    def transient_up_failure(self, stderr: str) -> bool:
        """Vagrant's docker provider lists every network of the host, then inspects each: one
        removed meanwhile (another lab's destroy) fails the `up` with "No such object"."""
        import re

        return "No such object" in stderr and re.search(r"docker\W+inspect", stderr) is not None

    def probe(self) -> Probe:
        if not shutil.which("vagrant"):
            return Probe(self.name, False, "vagrant not found (apt-get install vagrant)")
        if not shutil.which("docker"):
            return Probe(self.name, False, "docker client not found (apt-get install docker.io)")
        ok, detail = docker_daemon()
        if not ok:
            return Probe(self.name, False, f"dockerd is not reachable: {detail}")
        return Probe(self.name, True, "dockerd answers; machines are containers running sshd and their own dockerd")

    def render_options(
        self, lab: LoadedLab, log: Log, events: Events, *, build: bool = True, lab_images: dict[str, str] | None = None
    ) -> dict:
        import time

        from ..hostbuild import machine_image

        if not build:  # `vmdock render`: the tag is known without building, the args without probing
            args = machine_image.machine_create_args(log, mirrors=_mirrors(), probe=False)
            return {"machine_image": self.base_image(), "create_args": args, "lab_images": dict(lab_images or {})}
        events.task("machine image")
        start = time.monotonic()
        image = machine_image.ensure_machine_image(
            log, mirror=self.mirror, on_line=lambda line: events.line("image", line)
        )
        args = machine_image.machine_create_args(log, mirrors=_mirrors())
        events.task_done("machine image", time.monotonic() - start)
        return {"machine_image": image, "create_args": args, "lab_images": dict(lab_images or {})}

    def check_options(self, options: dict) -> None:
        from ..errors import ConfigError

        if not options.get("machine_image"):
            raise ConfigError("the docker provider needs a machine image")

    def box(self, entry: dict) -> str | None:
        return None

    def netmask(self, net: ipaddress.IPv4Network) -> int:
        return int(net.prefixlen)  # the docker provider wants a prefix length

    def native_status(self, inst: Instance, machines: list[str], log: Log | None = None) -> dict[str, str] | None:
        proc = quick_run(
            ["docker", "ps", "-a", "--filter", f"label={INSTANCE_LABEL}={inst.id}",
             "--format", '{{.Label "' + MACHINE_LABEL + '"}}\t{{.State}}'],
            log,
        )
        if proc is None or proc.returncode != 0:
            return None
        found = container_states(proc.stdout)
        return {m: found.get(m, NOT_CREATED) for m in machines}

    def ssh_configs(self, inst: Instance, machines: list[str], log: Log) -> dict[str, SshConfig] | None:
        """What `vagrant ssh-config` says of a docker machine, from one `docker inspect`: the
        host port Vagrant published for 22, user vagrant and Vagrant's insecure key (the
        Vagrantfile keeps it: ``config.ssh.insert_key = false``)."""
        from ..driver import SshConfig

        key = Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d") / "insecure_private_key"
        if not key.is_file():
            return None
        names = [inst.machine_name(m) for m in machines]
        proc = quick_run(["docker", "inspect", "-f", "{{json .NetworkSettings.Ports}}", *names], log)
        if proc is None or proc.returncode != 0:
            return None
        out = {}
        for machine, line in zip(machines, proc.stdout.splitlines(), strict=False):
            address = ssh_address(line)
            if address is None:
                return None
            out[machine] = SshConfig(address[0], address[1], "vagrant", (str(key),))
        return out if len(out) == len(machines) else None

    def destroy(self, inst: Instance, log: Log) -> Removal | None:
        """`docker rm -f` of the instance's containers, never another home's (a second), where `vagrant destroy` takes
        10–25 s (Vagrant's start, a graceful stop); the machines are throwaway.  Their
        volumes (the inner Docker's data: seconds to delete) are left to ``finish``, which
        starts a `docker volume rm` that runs on by itself.  Vagrant's global machine index
        keeps a stale entry (`vagrant global-status --prune`)."""
        from ..runlog import run

        ids = [cid for cid, _ in self._lab_containers(inst, log)]
        if not ids:
            return Removal([])
        fmt = '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}'
        volumes = run(["docker", "inspect", "-f", fmt, *ids], log, check=False).stdout.split()
        run(["docker", "rm", "-f", *ids], log)

        def finish() -> None:
            import subprocess

            if volumes:
                cmd = ["docker", "volume", "rm", *volumes]
                subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
                log.event(f"host$ {' '.join(cmd)}  (left running in the background)")

        said = f"machines (docker: {len(ids)} container(s); their volumes are deleted in the background)"
        return Removal([said], finish)

    def _lab_containers(self, inst: Instance, log: Log) -> list[tuple[str, str]]:
        """(id, name) of every container of the lab instance."""
        from ..runlog import run

        if not docker_daemon()[0]:
            return []
        cmd = ["docker", "ps", "-a", "--no-trunc", "--filter", f"label={INSTANCE_LABEL}={inst.id}",
               "--format", "{{.ID}}\t{{.Names}}"]
        return [(line.partition("\t")[0], line.partition("\t")[2]) for line in run(cmd, log).stdout.splitlines()
                if line.strip()]

    def cleanup(self, inst: Instance, log: Log) -> list[str]:
        """Containers and the network of this instance that are left (never another's, nor the shared machine image)."""
        from ..runlog import run

        if not docker_daemon()[0]:
            return []
        removed = []
        left = [cid for cid, _ in self._lab_containers(inst, log)]
        if left:
            run(["docker", "rm", "-f", "-v", *left], log)
            removed.append(f"{len(left)} leftover container(s)")
        mine = f"label={INSTANCE_LABEL}={inst.id}"
        for net in run(["docker", "network", "ls", "-q", "--filter", mine], log).stdout.split():
            inspect = ["docker", "network", "inspect", "-f", "{{len .Containers}}", net]
            users = run(inspect, log, check=False).stdout.strip()
            if users == "0":
                run(["docker", "network", "rm", net], log)
                removed.append(f"network {inst.network_name}")
        return removed

    def prepare_network(self, seat: Seat, log: Log) -> None:
        """The instance's docker network, with its labels: Vagrant's docker provider joins a
        network by name only when it exists (it would make one named after the subnet)."""
        from ..runlog import run
        from ..seats import label_args

        inst = seat.instance
        subnets = "{{range .IPAM.Config}}{{.Subnet}} {{end}}"
        have = run(["docker", "network", "inspect", "-f", subnets, inst.network_name], log, check=False)
        if have.returncode == 0:
            if str(seat.subnet) in have.stdout.split():
                return
            run(["docker", "network", "rm", inst.network_name], log)  # left by an earlier lease; no machine uses it
        labels = label_args(inst.labels())
        run(["docker", "network", "create", "--subnet", str(seat.subnet), *labels, inst.network_name], log)

    def machines(self, inst: Instance, log: Log) -> list[Machine] | None:
        from ..hostscan import docker_machines

        return docker_machines(log, inst.id) if docker_daemon()[0] else None

    def remove(self, machines: list[Machine], log: Log) -> None:
        """`docker rm -f -v`, until they are gone: a container that a killed `docker run` left
        being created is listed before dockerd can remove it (it answers "No such container")."""
        import time

        from ..hostscan import docker_machines
        from ..runlog import run

        ids = {m.id for m in machines}
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while ids:
            run(["docker", "rm", "-f", "-v", *sorted(ids)], log, check=False)
            ids &= {m.id for m in docker_machines(log, machines[0].instance)}
            if ids and time.monotonic() > deadline:
                raise ProviderError(f"docker rm -f did not remove {', '.join(i[:12] for i in sorted(ids))}",
                                    hint="`docker ps -a` shows it; dockerd may be overloaded")
            if ids:
                time.sleep(1)

    def base_image(self) -> str:
        """The machine image `up` would use now (its tag is computed, nothing is built)."""
        from ..hostbuild import machine_image

        return machine_image.machine_image_tag()

    def lab_images(self, log: Log) -> list[LabImage]:
        from ..labimages import ROLE, LabImage
        from .docker_capture import list_images

        if not docker_daemon()[0]:
            return []
        listed = list_images(log, f"vmdock.role={ROLE}")
        found = (LabImage.from_labels(tag, labels, size) for tag, labels, size in listed)
        return [i for i in found if i is not None and i.provider == self.name]

    def capture(self, inst: Instance, machine: str, tag: str, labels: dict[str, str], log: Log) -> str:
        from ..labimages import LABEL_PREFIX
        from ..machine_setup import provisioner
        from .docker_capture import capture

        return capture(inst.machine_name(machine), tag, labels, provisioner("start-docker.sh"), log,
                       lab_image_label=f"{LABEL_PREFIX}fingerprint")

    def recover_capture(self, inst: Instance, machine: str, log: Log) -> None:
        from ..machine_setup import provisioner
        from .docker_capture import resume

        resume(inst.machine_name(machine), provisioner("start-docker.sh"), log)

    def restore(self, inst: Instance, machine: str, log: Log) -> None:
        from .docker_capture import restore_status

        restore_status(inst.machine_name(machine), log)

    def prune(self, log: Log, *, everything: bool = False) -> list[Pruned]:
        """Machine images and lab images that no container on this host was made from."""
        from ..hostbuild import machine_image
        from ..labimages import ROLE
        from ..runlog import run

        if not docker_daemon()[0]:
            return []

        rows = []
        for role in (machine_image.ROLE_LABEL, f"vmdock.role={ROLE}"):  # machine images, lab images
            listed = run(["docker", "image", "ls", "--no-trunc", "--filter", f"label={role}",
                          "--format", "{{.ID}}\t{{.Repository}}:{{.Tag}}"], log).stdout
            rows += [tuple(line.split("\t", 1)) for line in listed.splitlines() if "\t" in line]
        current = None if everything else self.base_image()
        out = []
        for ref, verdict in prune_verdicts(rows, _image_users(log), current):
            if verdict is not None:
                out.append(Pruned(ref, False, verdict))
                continue
            result = run(["docker", "rmi", ref], log, check=False)
            ok = result.returncode == 0
            out.append(Pruned(ref, ok, "no lab uses it" if ok else f"docker rmi failed: {result.stderr.strip()[:200]}"))
        return out


def prune_verdicts(images: list[tuple[str, str]], users: dict[str, set[str]], current: str | None):
    """(image id, repo:tag) rows → (ref, why it is kept, or None: remove it)."""
    for image_id, ref in images:
        ref = image_id if "<none>" in ref else ref
        if users.get(image_id):
            yield ref, "used by " + ", ".join(sorted(users[image_id]))
        elif ref == current:
            yield ref, "the current machine image: the next `vmdock up` uses it (`vmdock prune --all` removes it too)"
        else:
            yield ref, None


def _image_users(log: Log) -> dict[str, set[str]]:
    """Image id → the containers made from it (lab/machine for vmdock's), host-wide."""
    from ..runlog import run

    ids = run(["docker", "ps", "-aq", "--no-trunc"], log).stdout.split()
    if not ids:
        return {}
    fmt = '{{.Image}}\t{{.Name}}\t{{index .Config.Labels "' + LAB_LABEL + '"}}'
    users: dict[str, set[str]] = {}
    for line in run(["docker", "inspect", "--format", fmt, *ids], log, check=False).stdout.splitlines():
        image, _, rest = line.partition("\t")
        name, _, lab = rest.partition("\t")
        name = name.lstrip("/")
        users.setdefault(image, set()).add(f"lab {lab} ({name})" if lab else f"container {name}")
    return users
