#!/usr/bin/env bash
# vmdock provisioner: configure and start dockerd, and wait until it answers.
#
# Runs as root inside a machine, after install-docker.sh.  Idempotent: when the
# daemon answers and its configuration did not change, it exits at once.
#
# How the daemon is started:
#   - PID 1 is systemd:  systemctl enable --now docker
#   - else, /etc/init.d/docker exists:  service docker start  (log /var/log/docker.log)
#     and, if that fails (Debian's script dies on `ulimit -n 1048576` in a
#     container without CAP_SYS_RESOURCE), the next way:
#   - else: /usr/local/sbin/vmdock-dockerd, a small supervisor that keeps dockerd
#     running (restarts it when it exits), started with setsid/nohup so that it
#     outlives the SSH session; log /var/log/dockerd.log, dockerd's pid in
#     /var/run/docker.pid, the supervisor's in /var/run/vmdock-dockerd.pid.
#
# Without systemd (a container standing in for a VM) it also checks that the
# `iptables` in use works, and switches iptables/ip6tables to the legacy (or
# nft) backend with update-alternatives when only the other one does.
#
# Environment:
#   VMDOCK_DAEMON_JSON      optional path of an uploaded daemon.json (rendered
#                           from templates/daemon.json.j2).  Installed as
#                           /etc/docker/daemon.json when it differs; a running
#                           daemon is then restarted.
#   VMDOCK_DOCKER_TIMEOUT   seconds to wait for `docker info` (default 120).  On
#                           timeout the last 20 lines of the daemon log go to
#                           stderr and the script exits 1.
set -euo pipefail

PROG=start-docker
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed (run install-docker.sh first)"
command -v docker >/dev/null 2>&1 || die "the docker client is not installed (run install-docker.sh first)"

DAEMON_JSON_SRC=${VMDOCK_DAEMON_JSON:-}
TIMEOUT=${VMDOCK_DOCKER_TIMEOUT:-120}
case "$TIMEOUT" in ''|*[!0-9]*) die "VMDOCK_DOCKER_TIMEOUT must be a number of seconds, got: $TIMEOUT" ;; esac

DAEMON_JSON=/etc/docker/daemon.json
PIDFILE=/var/run/docker.pid
SUP=/usr/local/sbin/vmdock-dockerd
SUP_PIDFILE=/var/run/vmdock-dockerd.pid
SUP_LOG=/var/log/dockerd.log
INIT_LOG=/var/log/docker.log

t0=$(date +%s)

have_systemd() { [ -d /run/systemd/system ]; }
answers() { timeout 10 docker info >/dev/null 2>&1; }

# pid from a pidfile, when that process is alive and its command line has $2
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -- "$2" >/dev/null || return 1
    echo "$pid"
}

if have_systemd; then
    MODE=systemd
elif [ -x /etc/init.d/docker ] && command -v service >/dev/null 2>&1; then
    MODE=init
else
    MODE=supervisor
fi
# A dockerd that runs under our supervisor stays there.
if [ "$MODE" = init ] && live_pid "$SUP_PIDFILE" vmdock-dockerd >/dev/null; then
    MODE=supervisor
fi

log_tail() {
    case "$MODE" in
        systemd)
            journalctl -u docker --no-pager -n 20 2>/dev/null || systemctl status docker --no-pager -n 20 2>/dev/null || true ;;
        init)
            tail -n 20 "$INIT_LOG" 2>/dev/null || true ;;
        supervisor)
            tail -n 20 "$SUP_LOG" 2>/dev/null || true ;;
    esac
}
FATAL_RE='failed to start daemon|unable to configure the Docker daemon|level=fatal'
fail() {
    local lines why
    lines=$(log_tail)
    printf '%s: last lines of the dockerd log (%s):\n' "$PROG" \
        "$(case $MODE in systemd) echo 'journalctl -u docker' ;; init) echo "$INIT_LOG" ;; *) echo "$SUP_LOG" ;; esac)" >&2
    printf '%s\n' "$lines" | sed 's/^/  /' >&2
    why=$(printf '%s\n' "$lines" | grep -E "$FATAL_RE" | tail -n 1 | sed -e 's/^.*dockerd\[[0-9]*\]: //' || true)
    case "$*" in *"$why"*) why= ;; esac
    die "$*${why:+ ($why)}"
}

# --- daemon.json --------------------------------------------------------------
CONFIG_CHANGED=0
if [ -n "$DAEMON_JSON_SRC" ]; then
    [ -f "$DAEMON_JSON_SRC" ] || die "VMDOCK_DAEMON_JSON=$DAEMON_JSON_SRC: no such file"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$DAEMON_JSON_SRC" 2>/dev/null \
            || die "$DAEMON_JSON_SRC is not valid JSON"
    fi
    if [ -f "$DAEMON_JSON" ] && cmp -s "$DAEMON_JSON_SRC" "$DAEMON_JSON"; then
        say "$DAEMON_JSON up to date"
    else
        mkdir -p /etc/docker
        install -m 0644 "$DAEMON_JSON_SRC" "$DAEMON_JSON.vmdock-new"
        mv -f "$DAEMON_JSON.vmdock-new" "$DAEMON_JSON"
        CONFIG_CHANGED=1
        say "installed $DAEMON_JSON"
    fi
fi

# --- fast path ------------------------------------------------------------------
if answers && [ "$CONFIG_CHANGED" = 0 ]; then
    if [ "$MODE" = systemd ] && ! systemctl is-enabled --quiet docker 2>/dev/null; then
        systemctl enable docker >/dev/null 2>&1 || warn "systemctl enable docker failed"
    fi
    say "dockerd already running ($MODE); nothing to do"
    exit 0
fi

# --- container fixes (no systemd) -------------------------------------------
iptables_works() { timeout 10 "$1" -w 5 -t nat -nL >/dev/null 2>&1 && timeout 10 "$1" -w 5 -t filter -nL >/dev/null 2>&1; }
fix_iptables() {
    command -v iptables >/dev/null 2>&1 || { warn "iptables is not installed; dockerd will fail to set up its bridge"; return 0; }
    if iptables_works iptables; then
        return 0
    fi
    command -v update-alternatives >/dev/null 2>&1 || { warn "iptables does not work here and update-alternatives is missing"; return 0; }
    local cur other
    cur=$(readlink -f "$(command -v iptables)")
    case "$cur" in
        *legacy*) other=nft ;;
        *) other=legacy ;;
    esac
    if [ -x "/usr/sbin/iptables-$other" ] && iptables_works "/usr/sbin/iptables-$other"; then
        update-alternatives --set iptables "/usr/sbin/iptables-$other" >/dev/null
        if [ -x "/usr/sbin/ip6tables-$other" ]; then
            update-alternatives --set ip6tables "/usr/sbin/ip6tables-$other" >/dev/null 2>&1 || true
        fi
        say "iptables ($cur) does not work here; switched to iptables-$other"
    else
        warn "neither iptables backend works here (tried $cur and iptables-$other); dockerd may fail"
    fi
}

# cgroup v2 inside a container: move our processes out of the root cgroup so
# that dockerd can enable controllers for its children (as docker:dind does).
fix_cgroup_v2() {
    [ -f /sys/fs/cgroup/cgroup.controllers ] || return 0
    [ "$(cat /proc/1/cgroup 2>/dev/null)" = "0::/" ] || return 0
    [ -w /sys/fs/cgroup/cgroup.subtree_control ] || return 0
    [ -s /sys/fs/cgroup/cgroup.subtree_control ] && return 0
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
    if sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
        say "cgroup v2: moved processes to /init and enabled controllers for dockerd"
    else
        warn "cgroup v2: could not enable controllers; containers may fail to start"
    fi
}

note_storage() {
    # dockerd cannot put overlay2 on top of overlayfs and falls back to vfs
    # (every layer a full copy).  The machine should have a volume there.
    local dir=/var/lib/docker fstype
    [ -f "$DAEMON_JSON" ] && grep -q '"storage-driver"' "$DAEMON_JSON" && return 0
    [ -d "$dir" ] || dir=/var/lib
    fstype=$(stat -f -c %T "$dir" 2>/dev/null || true)
    if [ "$fstype" = overlayfs ]; then
        warn "/var/lib/docker is on overlayfs: dockerd will use the slow vfs storage driver; give the machine a volume at /var/lib/docker"
    fi
}

if ! have_systemd; then
    fix_iptables
    fix_cgroup_v2
    note_storage
fi

# --- stopping a running daemon for a restart (no systemd) ------------------------
stop_dockerd() {
    local pid
    pid=$(live_pid "$PIDFILE" dockerd) || return 0
    say "stopping dockerd (pid $pid) to apply the new configuration"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.5
    done
    warn "dockerd (pid $pid) did not stop in 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
}

# Pid files left by a machine that was stopped (a container restart keeps
# /var/run): dockerd refuses to start when the pid there is some other process.
clear_stale_pidfiles() {
    if [ -e "$PIDFILE" ] && ! live_pid "$PIDFILE" dockerd >/dev/null; then rm -f "$PIDFILE"; fi
    local cpid=/var/run/docker/containerd/containerd.pid
    if [ -e "$cpid" ] && ! live_pid "$cpid" containerd >/dev/null; then rm -f "$cpid"; fi
    if [ -e "$SUP_PIDFILE" ] && ! live_pid "$SUP_PIDFILE" vmdock-dockerd >/dev/null; then rm -f "$SUP_PIDFILE"; fi
}

write_supervisor() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<'EOF'
#!/usr/bin/env bash
# vmdock-dockerd: keeps dockerd running where PID 1 is not systemd.
# Written by vmdock's start-docker.sh, which starts it as
#   setsid nohup /usr/local/sbin/vmdock-dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
# Stop:    kill -TERM "$(cat /var/run/vmdock-dockerd.pid)"
# Restart: kill -TERM "$(cat /var/run/docker.pid)"   (dockerd comes back at once,
#          reading the current daemon.json)
# A dockerd that fails is restarted after 2, 4, ... 30 s; SIGUSR1 to this
# process cuts such a wait short.
echo $$ >/var/run/vmdock-dockerd.pid
child=
sleeper=
stopping=0
trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null' TERM INT HUP
trap 'delay=0; [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null' USR1
delay=0
while [ "$stopping" = 0 ]; do
    echo "vmdock-dockerd: $(date -u +%FT%TZ) starting dockerd"
    dockerd &
    child=$!
    while :; do
        wait "$child"; rc=$?
        # wait also returns (>128) when a trapped signal arrives
        [ -d "/proc/$child" ] || break
    done
    child=
    [ "$stopping" = 1 ] && break
    if [ "$rc" = 0 ]; then
        delay=0            # a clean shutdown (SIGTERM): restart at once
    else
        delay=$(( delay < 2 ? 2 : (delay * 2 > 30 ? 30 : delay * 2) ))
    fi
    echo "vmdock-dockerd: $(date -u +%FT%TZ) dockerd exited with status $rc; restarting in $delay s"
    if [ "$delay" -gt 0 ]; then
        sleep "$delay" &
        sleeper=$!
        wait "$sleeper" 2>/dev/null || true
        kill "$sleeper" 2>/dev/null || true
        sleeper=
    fi
done
rm -f /var/run/vmdock-dockerd.pid
echo "vmdock-dockerd: $(date -u +%FT%TZ) stopped"
EOF
    chmod 0755 "$tmp"
    if [ -f "$SUP" ] && cmp -s "$tmp" "$SUP"; then
        rm -f "$tmp"
    else
        mkdir -p "$(dirname "$SUP")"
        mv -f "$tmp" "$SUP"
    fi
}

start_supervisor() {
    local pid
    if pid=$(live_pid "$SUP_PIDFILE" vmdock-dockerd); then
        # it restarts dockerd by itself; cut short a back-off wait after failures
        kill -USR1 "$pid" 2>/dev/null || true
        return 0
    fi
    write_supervisor
    touch "$SUP_LOG"
    say "starting dockerd under $SUP (log $SUP_LOG)"
    # setsid: own session, so no SIGHUP when the SSH session ends; all fds
    # redirected, so the SSH channel (or docker exec) is not held open.
    setsid nohup "$SUP" >>"$SUP_LOG" 2>&1 </dev/null &
}

LOG_FILE=
LOG_OFFSET=0
mark_log() {
    case "$MODE" in init) LOG_FILE=$INIT_LOG ;; supervisor) LOG_FILE=$SUP_LOG ;; *) LOG_FILE= ;; esac
    LOG_OFFSET=0
    [ -n "$LOG_FILE" ] && [ -f "$LOG_FILE" ] && LOG_OFFSET=$(wc -c <"$LOG_FILE")
    return 0
}

# --- start / restart ------------------------------------------------------------
case "$MODE" in
    systemd)
        systemctl reset-failed docker >/dev/null 2>&1 || true
        if [ "$CONFIG_CHANGED" = 1 ] && systemctl is-active --quiet docker; then
            say "restarting docker.service for the new configuration"
            systemctl restart docker 2>/dev/null || fail "systemctl restart docker failed"
        fi
        say "systemctl enable --now docker"
        systemctl enable --now docker >/dev/null 2>&1 || fail "systemctl enable --now docker failed"
        ;;
    init|supervisor)
        if [ "$CONFIG_CHANGED" = 1 ]; then
            stop_dockerd
        fi
        clear_stale_pidfiles
        if [ "$MODE" = init ]; then
            mark_log
            say "service docker start"
            if ! service docker start >/tmp/vmdock-service-docker.out 2>&1; then
                warn "service docker start failed: $(tr '\n' ' ' </tmp/vmdock-service-docker.out | sed 's/  */ /g')"
                say "falling back to a supervised dockerd"
                MODE=supervisor
            fi
            rm -f /tmp/vmdock-service-docker.out
        fi
        if [ "$MODE" = supervisor ]; then
            mark_log
            start_supervisor
        fi
        ;;
esac

# --- wait -------------------------------------------------------------------------
say "waiting up to $TIMEOUT s for docker info"
deadline=$(( $(date +%s) + TIMEOUT ))
while ! answers; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        fail "dockerd did not answer docker info within $TIMEOUT s"
    fi
    if [ -n "$LOG_FILE" ] && [ -f "$LOG_FILE" ]; then
        why=$(tail -c +"$((LOG_OFFSET + 1))" "$LOG_FILE" | grep -E "$FATAL_RE" | head -n 1 || true)
        [ -z "$why" ] || fail "dockerd failed to start: $why"
    fi
    if [ "$MODE" = systemd ] && systemctl is-failed --quiet docker; then
        fail "docker.service failed"
    fi
    sleep 0.5
done

info=$(docker info --format '{{.ServerVersion}} storage={{.Driver}} cgroup={{.CgroupVersion}}' 2>/dev/null || true)
ipt=$(iptables --version 2>/dev/null | sed -n 's/.*(\(.*\)).*/\1/p')
say "dockerd ready in $(( $(date +%s) - t0 )) s ($MODE; ${info}${ipt:+ iptables=$ipt})"
