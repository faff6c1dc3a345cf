#!/bin/bash
# Entrypoint of the MariaDB image: initialise the data directory on the FIRST start only
# (an empty volume), creating the application database and user; on every later start
# (the same volume, e.g. after the container was removed and re-created) keep the data.
#
# Environment (docker run -e):
#   MYSQL_PASSWORD  the application user's password (required on the first start)
#   MYSQL_USER      the application user (default: app)
#   MYSQL_DATABASE  the application database (default: app)
# root has no password: it logs in only through the unix socket, inside the container.
set -euo pipefail

DATADIR=/var/lib/mysql

if [ "${1:-}" = mariadbd ] || [ "${1:-}" = mysqld ]; then
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld "$DATADIR"

    if [ -d "$DATADIR/mysql" ]; then
        echo "entrypoint: $DATADIR already holds a database: keeping it, no initialisation"
    else
        : "${MYSQL_PASSWORD:?entrypoint: the data directory is empty: set MYSQL_PASSWORD to initialise it}"
        MYSQL_USER=${MYSQL_USER:-app}
        MYSQL_DATABASE=${MYSQL_DATABASE:-app}
        echo "entrypoint: $DATADIR is empty: initialising it"
        mariadb-install-db --user=mysql --datadir="$DATADIR" \
            --auth-root-authentication-method=socket --skip-test-db >/dev/null

        # A temporary server without networking, on its own socket: nothing can reach it
        # (nor mistake it for the real server) while the user is created.
        sock=/run/mysqld/init.sock
        "$@" --skip-networking --socket="$sock" &
        pid=$!
        for _ in $(seq 1 60); do
            mariadb-admin --socket="$sock" ping >/dev/null 2>&1 && break
            kill -0 "$pid" 2>/dev/null || { echo "entrypoint: the temporary server died" >&2; exit 1; }
            sleep 1
        done

        sql_quote() { local s=${1//\\/\\\\}; printf "'%s'" "${s//\'/\\\'}"; }
        mariadb --protocol=socket --socket="$sock" <<SQL
CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER $(sql_quote "$MYSQL_USER")@'%' IDENTIFIED BY $(sql_quote "$MYSQL_PASSWORD");
GRANT ALL PRIVILEGES ON \`${MYSQL_DATABASE}\`.* TO $(sql_quote "$MYSQL_USER")@'%';
SQL
        kill "$pid"
        wait "$pid" || true
        echo "entrypoint: initialised: database '$MYSQL_DATABASE', user '$MYSQL_USER'@'%'"
    fi
fi

exec "$@"
