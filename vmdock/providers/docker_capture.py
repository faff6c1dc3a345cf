"""Lab images of docker-provider machines: capture a machine container, start from one.

A machine's inner dockerd keeps its data in an anonymous volume at
/var/lib/docker (overlay2 cannot sit on the container's own overlayfs), and
`docker commit` leaves volumes out.  Nor can raw overlay2 data (whiteout
character devices, ``trusted.overlay.*`` xattrs) be nested in an image layer
safely.  So capture:

1. records the inner containers that run (``/var/lib/vmdock/running-containers``),
   except a swarm service's tasks, which the restored swarm starts itself;
2. stops the inner dockerd cleanly (vmdock's supervisor, or the init script);
3. packs /var/lib/docker, xattrs included, into ONE file of the container's
   own filesystem: ``/var/lib/vmdock/docker-data.tar``;
4. installs the start hook ``/usr/local/sbin/vmdock-lab-start`` (which runs
   ``vmdock-lab-restore`` on its own) and vmdock's start-docker provisioner;
5. ``docker commit``s the container with the hook as its entrypoint and the
   lab image's labels;
6. puts the machine back as it was (tar removed, dockerd and the containers
   started again).

A container made from the image runs the hook first; it starts the restore on
its own and the machine's init (sshd) at once, so Vagrant is done while the
tar goes back into the new, empty volume, dockerd starts and the recorded
containers start.  ``restore_status`` waits for the restore's outcome.
"""
from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

from ..errors import CommandError, ProviderError, tail

if TYPE_CHECKING:
    from ..runlog import Log

STATE_DIR = "/var/lib/vmdock"
DATA_TAR = f"{STATE_DIR}/docker-data.tar"
RUNNING = f"{STATE_DIR}/running-containers"
CAPTURE_PID = f"{STATE_DIR}/capture.pid"
START_DOCKER = f"{STATE_DIR}/start-docker.sh"
STATUS = f"{STATE_DIR}/lab-start.status"
HOOK = "/usr/local/sbin/vmdock-lab-start"
RESTORE = "/usr/local/sbin/vmdock-lab-restore"
HOOK_LOG = "/var/log/vmdock-lab-start.log"
MACHINE_INIT = "/usr/local/sbin/vmdock-machine-init"  # the machine image's entrypoint
MACHINE_CMD = ["/usr/sbin/sshd", "-D", "-e"]
TAR_FLAGS = "--xattrs --xattrs-include='*' --numeric-owner"
#: start the recorded containers: oldest first, and again while some start (one may need
#: another running first: --link, --network container:, --volumes-from)
_START_RECORDED = f"""\
start_recorded() {{
    local pending left c
    pending=$(cat {RUNNING} 2>/dev/null || true)
    for _ in 1 2 3 4 5; do
        left=
        for c in $pending; do docker start "$c" >/dev/null 2>&1 || left="$left $c"; done
        [ -z "$left" ] && return 0
        pending=$left
    done
    for c in $left; do docker start "$c" >/dev/null; done
}}
"""

#: on a swarm manager, wait (at most 150 s) until every service runs all its tasks again, as when
#: the image was made (the workers come back at the same time and swarm reschedules), and until
#: the overlay networks' service discovery (``tasks.<service>``) knows each running task
_WAIT_SWARM = r"""
wait_swarm() {
    [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] || return 0
    local want seen net
    for _ in $(seq 1 300); do
        # running and wanted tasks per service (jobs, which end, left out)
        want=$(docker service ls --format '{{.Name}} {{.Replicas}}' 2>/dev/null |
               awk '!/completed/ { split($2, r, "/"); print $1, r[1], r[2] }') || { sleep 0.5; continue; }
        if echo "$want" | awk '$2 != $3 { bad = 1 } END { exit bad }'; then
            seen=$(for net in $(docker network ls --filter driver=overlay --format '{{.Name}}' | grep -vx ingress); do
                       docker network inspect --verbose "$net" 2>/dev/null \
                           --format '{{range $k, $v := .Services}}{{$k}} {{len $v.Tasks}}{{"\n"}}{{end}}'
                   done)
            awk 'NR == FNR { want[$1] = $2; next } NF == 2 && ($1 in want) && $2 < want[$1] { bad = 1 }
                 END { exit bad }' <(echo "$want") <(echo "$seen") && return 0
        fi
        sleep 0.5
    done
    echo "vmdock-lab-restore: swarm services still converging after 150 s: ${want//$'\n'/, }" >&2
}
"""

_STOP_AND_PACK = f"""\
set -euo pipefail
mkdir -p {STATE_DIR}
echo $$ >{CAPTURE_PID}  # a killed `image build` leaves this script running: the put-back stops it first
# oldest first; not a swarm service's tasks: swarm starts those itself (a task started
# by hand fails with "secret store is not initialized", and swarm would replace it anyway)
task='{{{{.Label "com.docker.swarm.task.id"}}}}'
docker ps --no-trunc --format "{{{{.ID}}}} $task" | awk '$2 == "" {{print $1}}' | tac >{RUNNING}.new
mv -f {RUNNING}.new {RUNNING}
sup=$(cat /var/run/vmdock-dockerd.pid 2>/dev/null || true)
if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
    kill -TERM "$sup"
elif [ -x /etc/init.d/docker ]; then
    service docker stop >/dev/null 2>&1 || true
fi
for _ in $(seq 1 120); do pgrep -x dockerd >/dev/null || pgrep -x containerd >/dev/null || break; sleep 0.5; done
if pgrep -x dockerd >/dev/null; then echo "dockerd did not stop in 60 s" >&2; exit 1; fi
rm -f {DATA_TAR} {STATUS}
tar {TAR_FLAGS} -cpf {DATA_TAR} -C /var/lib/docker .
"""

_RESTORE = f"""\
#!/bin/bash
# vmdock-lab-restore: run by vmdock-lab-start, on its own, at each start of a machine
# made from a vmdock lab image (docker provider).  On the first start the inner
# dockerd's data, kept aside as one tar (an image layer cannot hold overlay2
# data), goes back into the empty /var/lib/docker volume; then dockerd starts
# (vmdock's start-docker.sh) and the containers that ran when the image was made
# start again.  The outcome goes to {STATUS}, its log to {HOOK_LOG}.
echo "vmdock-lab-restore: $(date -u +%FT%TZ)"
status=ok
if [ -f {DATA_TAR} ] && [ -z "$(ls -A /var/lib/docker 2>/dev/null)" ]; then
    tar {TAR_FLAGS} -xpf {DATA_TAR} -C /var/lib/docker || status="restoring /var/lib/docker failed"
    echo "vmdock-lab-restore: $(date -u +%FT%TZ) /var/lib/docker restored"
fi
if [ "$status" = ok ]; then
    bash {START_DOCKER} || status="starting dockerd failed"
fi
{_START_RECORDED}
{_WAIT_SWARM}
if [ "$status" = ok ]; then
    start_recorded || status="starting the lab's containers failed"
fi
[ "$status" = ok ] && wait_swarm
echo "$status" > {STATUS}.new && mv -f {STATUS}.new {STATUS}
echo "vmdock-lab-restore: $(date -u +%FT%TZ) $status"
"""

_HOOK = f"""\
#!/bin/sh
# vmdock-lab-start: the entrypoint of a vmdock lab image (docker provider).
# Starts {RESTORE} on its own (sshd need not wait for it: vmdock waits for
# {STATUS}), then the machine's init.
rm -f {STATUS}
( setsid {RESTORE} >>{HOOK_LOG} 2>&1 </dev/null & )
exec {MACHINE_INIT} "$@"
"""

_RESUME = f"""\
set -euo pipefail
{_START_RECORDED}
{_WAIT_SWARM}
# a capture stopped half-way (`image build` killed) may still be stopping dockerd or packing:
# stop it, and let a dockerd it was stopping end, before starting everything again
pack=$(cat {CAPTURE_PID} 2>/dev/null || true)
if [ -n "$pack" ] && [ "$pack" != $$ ] && kill -0 "$pack" 2>/dev/null; then
    pkill -KILL -P "$pack" 2>/dev/null || true
    kill -KILL "$pack" 2>/dev/null || true
fi
rm -f {CAPTURE_PID} {RUNNING}.new
if ! docker info >/dev/null 2>&1; then  # stopped, or stopping: all of it down, then started anew
    sup=$(cat /var/run/vmdock-dockerd.pid 2>/dev/null || true)
    if [ -n "$sup" ]; then kill -TERM "$sup" 2>/dev/null || true; fi
    for _ in $(seq 1 120); do
        if {{ [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; }} ||
           pgrep -x dockerd >/dev/null || pgrep -x containerd >/dev/null; then
            sleep 0.5
        else
            break
        fi
    done
fi
rm -f {DATA_TAR}
bash {START_DOCKER} >/dev/null
start_recorded
wait_swarm
"""


def _exec(container: str, script: str, log: Log, what: str, timeout: float = 1800):
    from ..runlog import run

    return run(["docker", "exec", "-i", container, "bash", "-s"], log, input=script, timeout=timeout,
               error_message=f"{what} in {container} failed")


def _put(container: str, path: str, text: str, log: Log, mode: str = "0755") -> None:
    from ..runlog import run

    script = f"cat > {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}"
    run(["docker", "exec", "-i", container, "sh", "-c", script], log, input=text)


def capture(container: str, tag: str, labels: dict[str, str], start_docker: str, log: Log,
            lab_image_label: str) -> str:
    """Commit ``container`` as ``tag`` (see the module's doc); return the image id.

    A machine made from a lab image is flattened (`docker export | docker import`): a
    commit would stack the new data tar on the old one, layer after layer."""
    from ..runlog import run

    _exec(container, _STOP_AND_PACK, log, "stopping dockerd and packing /var/lib/docker")
    try:
        _put(container, START_DOCKER, start_docker, log)
        _put(container, RESTORE, _RESTORE, log)
        _put(container, HOOK, _HOOK, log)
        changes = [f"ENTRYPOINT {json.dumps([HOOK])}", f"CMD {json.dumps(MACHINE_CMD)}"]
        changes += [f"LABEL {k}={json.dumps(v)}" for k, v in sorted(labels.items())]
        fmt = ("{{json .Config.Env}}\t{{json .Config.ExposedPorts}}\t"
               "{{index .Config.Labels \"" + lab_image_label + "\"}}")
        fields = run(["docker", "inspect", "-f", fmt, container], log).stdout.rstrip("\n").split("\t")
        env, ports, from_lab_image = (fields + ["", "", ""])[:3]
        if from_lab_image and from_lab_image != "<no value>":
            changes += [f"ENV {e.partition('=')[0]}={json.dumps(e.partition('=')[2])}" for e in json.loads(env) or []]
            changes += [f"EXPOSE {p}" for p in json.loads(ports) or {}]
            flags = " ".join(f"--change {shlex.quote(c)}" for c in changes)
            pipe = f"docker export {shlex.quote(container)} | docker import {flags} - {shlex.quote(tag)}"
            image_id: str = run(["bash", "-o", "pipefail", "-c", pipe], log, timeout=1800).stdout.strip()
        else:
            args = ["docker", "commit"]
            for c in changes:
                args += ["--change", c]
            image_id = run([*args, container, tag], log, timeout=1800).stdout.strip()
    finally:
        resume(container, start_docker, log)
    return image_id


def resume(container: str, start_docker: str, log: Log) -> None:
    """Put the machine back as it was before a capture: data tar removed, dockerd and the
    recorded containers started.  Idempotent, and whatever point the capture reached: also
    what `up` runs after a killed `image build`."""
    _put(container, START_DOCKER, start_docker, log)
    _exec(container, _RESUME, log, "starting dockerd again")


def restore_status(container: str, log: Log, wait: float = 600) -> None:
    """Wait for the start hook of a machine made from a lab image; raise when it failed."""
    from ..runlog import run

    script = (f"for _ in $(seq 1 {int(wait * 2)}); do [ -s {STATUS} ] && break; sleep 0.5; done; "
              f"cat {STATUS} 2>/dev/null; echo; tail -n 20 {HOOK_LOG} 2>/dev/null")
    out = run(["docker", "exec", container, "sh", "-c", script], log, check=False, timeout=wait + 60)
    status = out.stdout.split("\n", 1)[0].strip()
    if out.returncode != 0 or status != "ok":
        raise ProviderError(
            f"{container}: starting from the lab image failed: {status or 'no answer from its start hook'}",
            stderr_tail=tail(out.stdout + out.stderr),
            hint="`vmdock up --no-image` takes the full path; `vmdock prune` then removes the unused image",
        )


def list_images(log: Log, role_label: str) -> list[tuple[str, dict[str, str], int]]:
    """(tag, labels, size) of every image labelled ``role_label``."""
    from ..runlog import run

    refs = run(["docker", "image", "ls", "--filter", f"label={role_label}", "--format", "{{.Repository}}:{{.Tag}}"],
               log).stdout.split()
    refs = [r for r in dict.fromkeys(refs) if "<none>" not in r]
    if not refs:
        return []
    out = run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}\t{{.Size}}", *refs], log, check=False)
    if out.returncode != 0:
        raise CommandError("docker image inspect of the lab images failed", stderr_tail=tail(out.stderr), log=log.path)
    rows = []
    for ref, line in zip(refs, out.stdout.splitlines(), strict=False):
        labels_json, _, size = line.rpartition("\t")
        rows.append((ref, json.loads(labels_json or "{}") or {}, int(size or 0)))
    return rows
