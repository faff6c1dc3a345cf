#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host for vmdock's docker provider and its tests:
# Vagrant, docker.io, debootstrap, and a running dockerd.  Idempotent.
# Run as root (or with sudo).  Works where systemd is PID 1 and where it is not.
set -euo pipefail

log() { printf '[host-setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi

export DEBIAN_FRONTEND=noninteractive
PKGS=(vagrant docker.io debootstrap openssh-client iptables ca-certificates curl python3-venv python3-pip)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "packages present"
fi

docker_up() { docker info >/dev/null 2>&1; }
if docker_up; then
  log "dockerd answers"
else
  if [ "$(ps -o comm= -p 1 2>/dev/null)" = "systemd" ]; then
    log "starting docker (systemd)"
    systemctl enable --now docker
  else
    log "starting dockerd (no systemd: background process, log /var/log/dockerd.log)"
    setsid nohup dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do docker_up && break; sleep 1; done
  if ! docker_up; then
    log "dockerd did not come up; last lines of its log:" >&2
    tail -n 20 /var/log/dockerd.log >&2 || true
    exit 1
  fi
  log "dockerd answers"
fi
