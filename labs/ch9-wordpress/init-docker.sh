#!/bin/bash
# 9.1 初始化Docker环境 — a fresh cloud VM: Docker is installed (vmdock did that, as
# the book's `apt-get install docker.io` / get.docker.com did); here its daemon gets
# a registry mirror (镜像加速器) in /etc/docker/daemon.json, so that `docker pull`
# of Docker Hub images goes through a mirror inside China.
#   REGISTRY_MIRROR  the mirror's URL (lab env); on Aliyun: the accelerator address
#                    shown in the Container Registry console, https://<id>.mirror.aliyuncs.com
# The change is merged into the daemon.json that is there (other keys are kept) and
# applied with a reload (SIGHUP): registry-mirrors is one of the settings dockerd
# re-reads without a restart, so running containers are not touched.
set -euo pipefail
: "${REGISTRY_MIRROR:?}"
CONF=/etc/docker/daemon.json

docker version --format 'client {{.Client.Version}}, server {{.Server.Version}} ({{.Server.Os}}/{{.Server.Arch}})'
command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends jq >/dev/null

[ -s "$CONF" ] || echo '{}' > "$CONF"
tmp=$(mktemp)
jq --arg m "$REGISTRY_MIRROR" '."registry-mirrors" = (((."registry-mirrors" // []) - [$m]) + [$m])' "$CONF" > "$tmp"
if cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    echo "$CONF already lists $REGISTRY_MIRROR"
else
    install -m 0644 "$tmp" "$CONF" && rm -f "$tmp"
    echo "wrote $CONF"
fi
cat "$CONF"

# reload: `systemctl reload docker` where systemd runs dockerd (it sends SIGHUP), else the signal itself
if [ -d /run/systemd/system ] && systemctl is-active --quiet docker; then
    systemctl reload docker
else
    kill -HUP "$(cat /var/run/docker.pid)"
fi
for _ in $(seq 1 20); do
    docker info -f '{{json .RegistryConfig.Mirrors}}' | grep -qF "\"${REGISTRY_MIRROR%/}/\"" && break
    sleep 0.5
done
docker info 2>/dev/null | sed -n '/Registry Mirrors:/,/^ [A-Z]/p' | sed '$d'
docker info -f '{{json .RegistryConfig.Mirrors}}' | grep -F "\"${REGISTRY_MIRROR%/}/\"" >/dev/null \
    || { echo "dockerd did not take the mirror $REGISTRY_MIRROR" >&2; exit 1; }
