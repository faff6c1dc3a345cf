#!/bin/sh
# mongo-abassador: relay TCP connections on LISTEN_PORT (27017) to MongoDB.
#
# Where MongoDB is, in this order:
#   TARGET_HOST / TARGET_PORT            set explicitly (e.g. a database on another host);
#   MONGODB_PORT_27017_TCP_ADDR / _PORT  the variables that `--link <container>:mongodb`
#                                        writes into this container (the book's way);
#   the host name "mongodb"              which the same link writes into /etc/hosts.
# socat -d -d logs every accepted connection, so `docker logs mongo-abassador` shows
# the traffic that goes through the ambassador.
set -eu
LISTEN_PORT=${LISTEN_PORT:-27017}
host=${TARGET_HOST:-${MONGODB_PORT_27017_TCP_ADDR:-}}
port=${TARGET_PORT:-${MONGODB_PORT_27017_TCP_PORT:-27017}}
if [ -z "$host" ] && getent hosts mongodb >/dev/null 2>&1; then
    host=mongodb
fi
if [ -z "$host" ]; then
    echo "mongo-abassador: no target: link the database as 'mongodb' (--link dlnnm-mongodb:mongodb) or set TARGET_HOST" >&2
    exit 1
fi
echo "mongo-abassador: 0.0.0.0:$LISTEN_PORT -> $host:$port"
exec socat -d -d "TCP-LISTEN:$LISTEN_PORT,fork,reuseaddr" "TCP:$host:$port"
