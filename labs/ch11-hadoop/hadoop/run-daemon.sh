#!/bin/bash
# run-daemon.sh NAME COMMAND... — (re)start one Hadoop daemon in its own container:
#   --network host      the daemon listens on the machine's own interfaces, so the other
#                       machines reach it at this machine's private address (and the
#                       container has the machine's host name and /etc/hosts);
#   --env-file          /etc/vmdock-hadoop/cluster.env (cluster-env.sh): the configuration;
#   -v NAME-data:/data  its state (NameNode metadata, DataNode blocks) on a named volume,
#                       so re-creating the container keeps the file system.
# Extra `docker run` options may come in DAEMON_OPTS (e.g. "-e ENSURE_NAMENODE_DIR=...").
set -euo pipefail
name=${1:?usage: run-daemon.sh NAME COMMAND...}; shift
: "${HADOOP_IMAGE:?}"
[ -f /etc/vmdock-hadoop/cluster.env ] || { echo "run-daemon.sh: run cluster-env.sh first" >&2; exit 1; }
docker stop -t 30 "$name" >/dev/null 2>&1 || true
docker rm -f "$name" >/dev/null 2>&1 || true
docker volume create "$name-data" >/dev/null
# the volume belongs to the image's hadoop user (the daemons do not run as root)
docker run --rm --user 0 --entrypoint /bin/sh -v "$name-data":/data "$HADOOP_IMAGE" \
    -c 'mkdir -p /data/dfs && chown -R hadoop /data'
# shellcheck disable=SC2086
docker run -d --name "$name" --restart unless-stopped --network host \
    --env-file /etc/vmdock-hadoop/cluster.env ${DAEMON_OPTS:-} \
    -v "$name-data":/data "$HADOOP_IMAGE" "$@" >/dev/null
echo "$name: started ($*)"
