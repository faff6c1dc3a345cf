#!/bin/bash
# Restart the Docker daemon so that it reads /etc/docker/daemon.json again —
# the way that works on this machine:
#   - systemd is PID 1 (a real VM, a cloud server):  systemctl restart docker
#   - no systemd (vmdock's docker provider: a container standing in for a VM):
#       the docker.io package's init script:          service docker restart
#       (or, where that script cannot run and vmdock started dockerd under its
#       small supervisor /usr/local/sbin/vmdock-dockerd: stop dockerd, the
#       supervisor starts it again with the new configuration)
# Then wait until the new daemon answers `docker info`.
# (registry-mirrors alone could also be reloaded without a restart: `systemctl
#  reload docker`, or `kill -HUP <dockerd pid>`; a restart works for every key.)
set -euo pipefail

pidfile=/var/run/docker.pid
old=$(cat "$pidfile" 2>/dev/null || true)

if [ -d /run/systemd/system ]; then
    echo "+ systemctl restart docker"
    systemctl restart docker
elif [ -s /var/run/vmdock-dockerd.pid ] && kill -0 "$(cat /var/run/vmdock-dockerd.pid)" 2>/dev/null; then
    echo "+ kill -TERM $old   # dockerd under vmdock-dockerd: it is started again at once"
    kill -TERM "$old"
else
    echo "+ service docker restart"
    service docker restart
fi

for _ in $(seq 1 120); do
    new=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$new" ] && [ "$new" != "$old" ] && timeout 10 docker info >/dev/null 2>&1; then
        echo "dockerd restarted: pid ${old:-?} -> $new"
        exit 0
    fi
    sleep 0.5
done
echo "dockerd did not come back within 60 s" >&2
tail -n 20 /var/log/docker.log /var/log/dockerd.log 2>/dev/null >&2 || true
exit 1
