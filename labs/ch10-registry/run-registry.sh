#!/bin/bash
# Start (or re-start) the registry container on the registry machine.
#
#   bash run-registry.sh plain    10.1: HTTP, no authentication, on 127.0.0.1:PORT only
#   bash run-registry.sh secure   10.2: HTTPS + htpasswd, on every address, PORT
#
# Both keep the images on the same named volume, so what was pushed in 10.1 is still
# there behind the password in 10.2. Needs REGISTRY_IMAGE, REGISTRY_PORT,
# REGISTRY_VOLUME, SECURE_DIR (lab env).
set -euo pipefail
MODE=${1:?usage: run-registry.sh plain|secure}
: "${REGISTRY_IMAGE:?}" "${REGISTRY_PORT:?}" "${REGISTRY_VOLUME:?}" "${SECURE_DIR:?}"

docker rm -f registry >/dev/null 2>&1 || true
docker volume create "$REGISTRY_VOLUME" >/dev/null   # a no-op when it exists

case "$MODE" in
plain)
    docker run -d --name registry --restart unless-stopped \
        -p "127.0.0.1:$REGISTRY_PORT:5000" \
        -v "$REGISTRY_VOLUME":/var/lib/docker-registry \
        "$REGISTRY_IMAGE"
    url="http://127.0.0.1:$REGISTRY_PORT/v2/" want=200 curl_opts=()
    ;;
secure)
    if ! { [ -s "$SECURE_DIR/secure/server.key" ] && [ -s "$SECURE_DIR/secure/htpasswd" ]; }; then
        echo "run tls/make-certs.sh and htpasswd first" >&2; exit 1
    fi
    install -m 0644 registry/config-auth.yml "$SECURE_DIR/config-auth.yml"
    # the registry runs as the image's docker-registry user: let it (only it) read
    # its key and the password file
    uid=$(docker run --rm --entrypoint id "$REGISTRY_IMAGE" -u)
    chown "$uid" "$SECURE_DIR/secure/server.key" "$SECURE_DIR/secure/htpasswd"
    chmod 0400 "$SECURE_DIR/secure/server.key" "$SECURE_DIR/secure/htpasswd"
    chmod 0755 "$SECURE_DIR/secure"
    docker run -d --name registry --restart unless-stopped \
        -p "$REGISTRY_PORT:5000" \
        -v "$REGISTRY_VOLUME":/var/lib/docker-registry \
        -v "$SECURE_DIR/config-auth.yml":/etc/docker/registry/config.yml:ro \
        -v "$SECURE_DIR/secure":/etc/docker/registry/secure:ro \
        "$REGISTRY_IMAGE"
    url="https://127.0.0.1:$REGISTRY_PORT/v2/" want=401 curl_opts=(--cacert "$SECURE_DIR/ca/ca.crt")
    ;;
*)
    echo "usage: run-registry.sh plain|secure" >&2; exit 2 ;;
esac

for _ in $(seq 1 30); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${curl_opts[@]}" "$url" || true)
    [ "$code" = "$want" ] && break
    [ "$(docker inspect -f '{{.State.Running}}' registry)" = true ] || break
    sleep 1
done
if [ "$code" != "$want" ]; then
    docker logs registry >&2
    echo "registry ($MODE): $url answered $code, expected $want" >&2
    exit 1
fi
echo "registry ($MODE) is up: $url -> $code"
