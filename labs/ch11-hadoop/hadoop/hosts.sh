#!/bin/bash
# hosts.sh — make every machine's name resolve to its private-network address.
#
# Hadoop daemons and MapReduce tasks advertise their host names (an application
# master, a task's shuffle server); every machine must resolve every other one's
# name to the address on the lab's private network. And a machine's own name must
# not resolve to 127.0.1.1 (Debian's /etc/hosts line for it), or a daemon would
# advertise a loopback address. This writes a managed block at the TOP of /etc/hosts
# (the first match wins) and drops the 127.0.1.1 line. Idempotent.
# Machines are named hadoop-<machine> (lab.yaml), their addresses are VMDOCK_IP_<MACHINE>.
set -euo pipefail
BEGIN="# >>> vmdock ch11-hadoop >>>"
END="# <<< vmdock ch11-hadoop <<<"
block="$BEGIN"$'\n'
for m in master worker1 worker2; do
    var="VMDOCK_IP_${m^^}"
    ip=${!var:?$var is not set}
    block+="$ip hadoop-$m $m"$'\n'
    if [ "$m" = "$VMDOCK_MACHINE" ] && [ "$(hostname)" != "hadoop-$m" ]; then
        echo "hosts.sh: warning: this machine is named $(hostname), expected hadoop-$m; adding it too" >&2
        block+="$ip $(hostname)"$'\n'
    fi
done
block+="$END"
rest=$(sed "/^$BEGIN\$/,/^$END\$/d" /etc/hosts | grep -v -E '^127\.0\.1\.1[[:space:]]' || true)
# rewrite in place (not mv): /etc/hosts may be a bind mount
printf '%s\n%s\n' "$block" "$rest" > /etc/hosts
echo "$(hostname): /etc/hosts now starts with"
sed -n "1,/^$END\$/p" /etc/hosts
getent hosts "$(hostname)"
