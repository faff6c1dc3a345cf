#!/bin/bash
# wait-port.sh HOST PORT [SECONDS] [CONTAINER] — wait until HOST:PORT accepts TCP
# connections; on timeout print the container's log tail (when named) and fail.
set -euo pipefail
host=$1 port=$2 secs=${3:-120} container=${4:-}
for _ in $(seq 1 "$secs"); do
    if timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
        echo "$host:$port answers"
        exit 0
    fi
    if [ -n "$container" ] && [ "$(docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null)" != true ]; then
        docker logs --tail 40 "$container" >&2 || true
        echo "wait-port: $container is not running" >&2
        exit 1
    fi
    sleep 1
done
[ -z "$container" ] || docker logs --tail 40 "$container" >&2 || true
echo "wait-port: $host:$port did not answer in $secs s" >&2
exit 1
