#!/bin/bash
# 9.3 部署WordPress容器 — start the WordPress container in the network wordpress-net
# (it reaches the database as "mysql"), port 80 published, wp-content on a volume.
# Needs DB_PASSWORD (a lab secret), DB_USER, DB_NAME, WORDPRESS_IMAGE, CONTENT_VOLUME,
# NETWORK, WEB_PORT (lab env).
set -euo pipefail
: "${DB_PASSWORD:?}" "${DB_USER:?}" "${DB_NAME:?}" "${WORDPRESS_IMAGE:?}" "${CONTENT_VOLUME:?}" "${NETWORK:?}" "${WEB_PORT:?}"

docker rm -f wordpress >/dev/null 2>&1 || true
WORDPRESS_DB_PASSWORD="$DB_PASSWORD" docker run -d --name wordpress --restart unless-stopped \
    --network "$NETWORK" \
    -p "$WEB_PORT":80 \
    -v "$CONTENT_VOLUME":/var/lib/wordpress/wp-content \
    -e WORDPRESS_DB_HOST=mysql \
    -e WORDPRESS_DB_NAME="$DB_NAME" \
    -e WORDPRESS_DB_USER="$DB_USER" \
    -e WORDPRESS_DB_PASSWORD \
    "$WORDPRESS_IMAGE"

for _ in $(seq 1 30); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WEB_PORT/" || true)
    [ "$code" = 302 ] && break
    [ "$(docker inspect -f '{{.State.Running}}' wordpress)" = true ] || break
    sleep 1
done
if [ "$code" != 302 ]; then
    docker logs wordpress >&2
    curl -sS "http://127.0.0.1:$WEB_PORT/" >&2 || true
    echo "wordpress: / answered $code, expected 302 (to the installation page)" >&2
    exit 1
fi
docker logs wordpress 2>&1 | grep '^entrypoint:' || true
curl -sS -o /dev/null -w "wordpress: http://127.0.0.1:$WEB_PORT/ -> %{http_code} %{redirect_url}\n" "http://127.0.0.1:$WEB_PORT/"
