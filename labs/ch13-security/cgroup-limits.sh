#!/bin/bash
# 13.2 cgroups: print the cgroup files that hold a container's limits, read
# straight from the kernel's cgroup filesystem in the machine.
# Usage: bash cgroup-limits.sh CONTAINER
# Works on cgroup v1 (one hierarchy per controller: memory/, cpu/, pids/ — what
# the 2015 book and this lab's docker provider have) and on cgroup v2 (one
# unified tree: memory.max, cpu.max, pids.max — what a Debian 12 VM has).
set -euo pipefail
c=${1:?usage: cgroup-limits.sh CONTAINER}
pid=$(docker inspect -f '{{.State.Pid}}' "$c")
[ "$pid" -gt 0 ] || { echo "$c is not running" >&2; exit 1; }
show() { printf '%s = %s\n' "$1" "$(cat "$1")"; }
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo "cgroup v2 (unified); $c (pid $pid) is in $(awk -F: '$1 == "0" {print $3}' "/proc/$pid/cgroup")"
    dir=/sys/fs/cgroup$(awk -F: '$1 == "0" {print $3}' "/proc/$pid/cgroup")
    show "$dir/memory.max"
    show "$dir/memory.swap.max"
    show "$dir/cpu.max"
    show "$dir/pids.max"
else
    # one line per hierarchy in /proc/PID/cgroup: ID:CONTROLLERS:PATH
    path() { awk -F: -v c="$1" '{n = split($2, a, ","); for (i = 1; i <= n; i++) if (a[i] == c) print $3}' "/proc/$pid/cgroup"; }
    echo "cgroup v1; $c (pid $pid) is in $(path memory) (memory hierarchy)"
    mem=/sys/fs/cgroup/memory$(path memory)
    cpu=/sys/fs/cgroup/cpu$(path cpu)
    [ -d "$cpu" ] || cpu=/sys/fs/cgroup/cpu,cpuacct$(path cpu)
    show "$mem/memory.limit_in_bytes"
    [ -f "$mem/memory.memsw.limit_in_bytes" ] && show "$mem/memory.memsw.limit_in_bytes"
    show "$cpu/cpu.cfs_quota_us"
    show "$cpu/cpu.cfs_period_us"
    show "/sys/fs/cgroup/pids$(path pids)/pids.max"
fi
