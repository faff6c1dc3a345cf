#!/bin/bash
# Restart dockerd so that it reads /etc/docker/daemon.json again, however it was
# started, and wait until it answers on its unix socket.
#  - systemd (a real Debian VM): docker.service starts `dockerd -H fd://`, and a
#    -H flag together with "hosts" in daemon.json is a fatal conflict; a drop-in
#    starts dockerd without -H, then `systemctl restart docker`.
#  - the vmdock-dockerd supervisor (the docker provider, no systemd; Debian's
#    /etc/init.d/docker fails there on `ulimit -n` without CAP_SYS_RESOURCE):
#    stop dockerd, the supervisor starts it again at once.
#  - otherwise: `service docker restart` (the init script passes no -H flag).
set -euo pipefail
if [ -d /run/systemd/system ]; then
    mkdir -p /etc/systemd/system/docker.service.d
    printf '%s\n' '# vmdock ch14: the listening addresses come from "hosts" in /etc/docker/daemon.json' \
        '[Service]' 'ExecStart=' 'ExecStart=/usr/sbin/dockerd --containerd=/run/containerd/containerd.sock' \
        >/etc/systemd/system/docker.service.d/vmdock-hosts.conf
    systemctl daemon-reload
    echo "systemctl restart docker"
    systemctl restart docker
elif sup=$(cat /var/run/vmdock-dockerd.pid 2>/dev/null) && [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
    pid=$(cat /var/run/docker.pid)
    echo "dockerd (pid $pid) runs under the vmdock-dockerd supervisor (pid $sup): stopping it, the supervisor starts it again"
    kill -TERM "$pid"
    for _ in $(seq 1 120); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
    kill -USR1 "$sup" 2>/dev/null || true        # no back-off wait
else
    echo "service docker restart"
    service docker restart
fi
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        echo "dockerd answers again (pid $(cat /var/run/docker.pid))"
        exit 0
    fi
    sleep 0.5
done
echo "dockerd did not come back within 60 s" >&2
tail -n 20 /var/log/dockerd.log /var/log/docker.log 2>/dev/null >&2 || true
exit 1
