#!/usr/bin/env bash
# vmdock provisioner library: functions shared by the provisioners.
# vmdock puts this file in front of every provisioner it runs; a provisioner
# run by hand sources it from beside itself.  Callers define say().

# `apt-get update` waits for the dpkg lock (DPkg::Lock::Timeout) but not for
# the lists lock, which apt-daily/unattended-upgrades hold at boot: wait here,
# up to 300 s.  Output is appended to $1.
apt_get_update() {
    local log=$1 deadline=$(( $(date +%s) + 300 )) before said=0
    while :; do
        before=$(wc -c <"$log" 2>/dev/null || echo 0)
        if DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1; then
            return 0
        fi
        if grep -q "Could not get lock" <(tail -c +"$((before + 1))" "$log") && [ "$(date +%s)" -lt "$deadline" ]; then
            [ "$said" = 1 ] || say "waiting for another apt process to release its lock"
            said=1
            sleep 3
            continue
        fi
        return 1
    done
}
