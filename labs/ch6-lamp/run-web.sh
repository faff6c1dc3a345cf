#!/bin/bash
# 6.3 启动容器 — start the Apache+PHP container linked to the database container.
# --link lamp-db:db writes "db" into this container's /etc/hosts and sets DB_PORT_3306_TCP_*
# (and DB_ENV_* — a copy of lamp-db's environment) variables. A link points at one
# container: when lamp-db is re-created, this container must be started again to follow it.
# Run from the lab folder as `bash run-web.sh`; needs DB_PASSWORD (a lab secret),
# DB_USER, DB_DATABASE, WEB_IMAGE, WEB_PORT (lab env).
set -euo pipefail
: "${DB_PASSWORD:?}" "${DB_USER:?}" "${DB_DATABASE:?}" "${WEB_IMAGE:?}" "${WEB_PORT:?}"

docker rm -f lamp-web >/dev/null 2>&1 || true
DB_PASSWORD="$DB_PASSWORD" docker run -d --name lamp-web \
    --link lamp-db:db \
    -p "$WEB_PORT":80 \
    -e DB_HOST=db \
    -e DB_DATABASE="$DB_DATABASE" \
    -e DB_USER="$DB_USER" \
    -e DB_PASSWORD \
    "$WEB_IMAGE"

for _ in $(seq 1 30); do
    curl -fs -o /dev/null "http://127.0.0.1:$WEB_PORT/" && break
    [ "$(docker inspect -f '{{.State.Running}}' lamp-web)" = true ] || break
    sleep 1
done
if [ "$(docker inspect -f '{{.State.Running}}' lamp-web)" != true ]; then
    docker logs lamp-web >&2
    echo "lamp-web stopped" >&2
    exit 1
fi
# -f: a page that cannot read the database (HTTP 500) fails here
curl -fsS -o /dev/null -w "lamp-web: http://127.0.0.1:$WEB_PORT/ -> %{http_code}\n" "http://127.0.0.1:$WEB_PORT/"
