#!/bin/bash
# ambassador: for every variable NAME_PORT_<port>_TCP=tcp://<address>:<target port>
# in the environment, listen on <port> and forward each connection there with socat.
#
# Those are the variables `--link other:name` sets, so on the server's side
#   docker run --link ch4-redis:redis …ambassador      # listens on 6379 -> ch4-redis:6379
# and on the client's side (another host) the same variable is given by hand:
#   docker run -e REDIS_PORT_6379_TCP=tcp://<server host>:6379 …ambassador
set -euo pipefail

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; exit 0' TERM INT

while IFS='=' read -r name value; do
    [[ $name =~ ^[A-Z0-9_]+_PORT_([0-9]+)_TCP$ ]] || continue
    [[ $value =~ ^tcp://([^:]+):([0-9]+)$ ]] || continue
    port=${name%_TCP}; port=${port##*_}
    target="${BASH_REMATCH[1]}:${BASH_REMATCH[2]}"
    echo "ambassador: listening on :$port, forwarding to $target ($name)"
    socat TCP4-LISTEN:"$port",fork,reuseaddr TCP4:"$target" &
    pids+=($!)
done < <(env | sort)

if [ "${#pids[@]}" -eq 0 ]; then
    echo "ambassador: no NAME_PORT_<port>_TCP=tcp://address:port variable: nothing to forward" >&2
    exit 1
fi
# stop (and let Docker restart or report) when any forwarder ends
wait -n
echo "ambassador: a forwarder stopped" >&2
exit 1
