#!/bin/bash
# 8.2 部署镜像注册服务器 — start (or re-start) the registry on the dev machine:
# HTTPS + htpasswd on port REGISTRY_PORT of every address, images on a named volume.
# Needs REGISTRY_IMAGE, REGISTRY_PORT, REGISTRY_VOLUME, SECURE_DIR (lab env), and
# tls/make-certs.sh and the htpasswd file done before.
set -euo pipefail
: "${REGISTRY_IMAGE:?}" "${REGISTRY_PORT:?}" "${REGISTRY_VOLUME:?}" "${SECURE_DIR:?}"
if ! { [ -s "$SECURE_DIR/secure/server.key" ] && [ -s "$SECURE_DIR/secure/htpasswd" ]; }; then
    echo "run tls/make-certs.sh and htpasswd first" >&2; exit 1
fi

docker rm -f registry >/dev/null 2>&1 || true
docker volume create "$REGISTRY_VOLUME" >/dev/null   # a no-op when it exists
# the registry runs as the image's docker-registry user: let it (only it) read its
# key and the password file
uid=$(docker run --rm --entrypoint id "$REGISTRY_IMAGE" -u)
chown "$uid" "$SECURE_DIR/secure/server.key" "$SECURE_DIR/secure/htpasswd"
chmod 0400 "$SECURE_DIR/secure/server.key" "$SECURE_DIR/secure/htpasswd"
chmod 0755 "$SECURE_DIR/secure"
docker run -d --name registry --restart unless-stopped \
    -p "$REGISTRY_PORT:5000" \
    -v "$REGISTRY_VOLUME":/var/lib/docker-registry \
    -v "$SECURE_DIR/secure":/etc/docker/registry/secure:ro \
    "$REGISTRY_IMAGE"

url="https://127.0.0.1:$REGISTRY_PORT/v2/"
for _ in $(seq 1 30); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$SECURE_DIR/ca/ca.crt" "$url" || true)
    [ "$code" = 401 ] && break
    [ "$(docker inspect -f '{{.State.Running}}' registry)" = true ] || break
    sleep 1
done
if [ "$code" != 401 ]; then
    docker logs registry >&2
    echo "registry: $url answered $code, expected 401 (authentication required)" >&2
    exit 1
fi
echo "registry is up: $url -> 401 without credentials"
