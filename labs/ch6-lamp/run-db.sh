#!/bin/bash
# 6.3 启动容器 — start the MariaDB container on its named volume.
# Used by the step "6.3 启动容器：mysql" and, unchanged, by the check that removes
# the container and starts it again: the data must come back from the volume.
# Run from the lab folder as `bash run-db.sh`; needs DB_PASSWORD (a lab secret),
# DB_USER, DB_DATABASE, DB_VOLUME, MYSQL_IMAGE (lab env).
set -euo pipefail
: "${DB_PASSWORD:?}" "${DB_USER:?}" "${DB_DATABASE:?}" "${DB_VOLUME:?}" "${MYSQL_IMAGE:?}"

# a clean shutdown first (docker rm -f alone would SIGKILL mariadbd: safe, but it means crash recovery)
docker stop -t 30 lamp-db >/dev/null 2>&1 || true
docker rm -f lamp-db >/dev/null 2>&1 || true
docker volume create "$DB_VOLUME" >/dev/null   # a no-op when it exists

# The password goes in through the environment (-e NAME without a value copies it
# from here), so it never shows on a command line.
MYSQL_PASSWORD="$DB_PASSWORD" docker run -d --name lamp-db \
    -v "$DB_VOLUME":/var/lib/mysql \
    -e MYSQL_DATABASE="$DB_DATABASE" \
    -e MYSQL_USER="$DB_USER" \
    -e MYSQL_PASSWORD \
    "$MYSQL_IMAGE"

# Ready = the application user gets in over TCP. (During the first-start
# initialisation the server runs without networking, so this cannot pass early.)
for _ in $(seq 1 90); do
    if MYSQL_PWD="$DB_PASSWORD" docker exec -e MYSQL_PWD lamp-db \
        mariadb -h 127.0.0.1 -u "$DB_USER" "$DB_DATABASE" -e 'SELECT 1' >/dev/null 2>&1; then
        docker logs lamp-db 2>&1 | grep '^entrypoint:' || true
        echo "lamp-db is ready ($(docker inspect -f '{{.NetworkSettings.IPAddress}}' lamp-db))"
        exit 0
    fi
    if [ "$(docker inspect -f '{{.State.Running}}' lamp-db)" != true ]; then
        docker logs lamp-db >&2
        echo "lamp-db stopped" >&2
        exit 1
    fi
    sleep 1
done
docker logs lamp-db >&2
echo "lamp-db did not become ready in 90 s" >&2
exit 1
