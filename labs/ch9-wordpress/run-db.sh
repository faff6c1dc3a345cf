#!/bin/bash
# 9.2 部署MySQL容器 — start the MariaDB container on its named volume, in the network
# wordpress-net under the name (alias) "mysql", as the book's `--link mysql:mysql`
# gave it. Its port is not published: only containers of the network reach it.
# Needs DB_PASSWORD (a lab secret), DB_USER, DB_NAME, DB_VOLUME, MYSQL_IMAGE, NETWORK.
set -euo pipefail
: "${DB_PASSWORD:?}" "${DB_USER:?}" "${DB_NAME:?}" "${DB_VOLUME:?}" "${MYSQL_IMAGE:?}" "${NETWORK:?}"

docker network inspect "$NETWORK" >/dev/null 2>&1 || docker network create "$NETWORK"
# a clean shutdown first (docker rm -f alone would SIGKILL mariadbd)
docker stop -t 30 wordpress-db >/dev/null 2>&1 || true
docker rm -f wordpress-db >/dev/null 2>&1 || true
docker volume create "$DB_VOLUME" >/dev/null   # a no-op when it exists

# the password goes in through the environment (-e NAME copies it from here), never on a command line
MYSQL_PASSWORD="$DB_PASSWORD" docker run -d --name wordpress-db --restart unless-stopped \
    --network "$NETWORK" --network-alias mysql \
    -v "$DB_VOLUME":/var/lib/mysql \
    -e MYSQL_DATABASE="$DB_NAME" \
    -e MYSQL_USER="$DB_USER" \
    -e MYSQL_PASSWORD \
    "$MYSQL_IMAGE"

# ready = the application user gets in over TCP
for _ in $(seq 1 90); do
    if MYSQL_PWD="$DB_PASSWORD" docker exec -e MYSQL_PWD wordpress-db \
        mariadb -h 127.0.0.1 -u "$DB_USER" "$DB_NAME" -e 'SELECT 1' >/dev/null 2>&1; then
        docker logs wordpress-db 2>&1 | grep '^entrypoint:' || true
        echo "wordpress-db is ready"
        exit 0
    fi
    if [ "$(docker inspect -f '{{.State.Running}}' wordpress-db)" != true ]; then
        docker logs wordpress-db >&2
        echo "wordpress-db stopped" >&2
        exit 1
    fi
    sleep 1
done
docker logs wordpress-db >&2
echo "wordpress-db did not become ready in 90 s" >&2
exit 1
