#!/usr/bin/env bash
# vmdock provisioner: install Docker Engine.
#
# Runs as root inside a machine (Debian 12 / Ubuntu 22.04+, with or without
# systemd as PID 1).  Idempotent: when `docker` and `dockerd` are already on
# PATH it says so and exits 0 at once.  Does not start the daemon (that is
# start-docker.sh).  apt output goes to /var/log/vmdock/install-docker.log; its
# tail is printed on failure.
#
# Environment:
#   VMDOCK_DOCKER_SOURCE     debian (default): the distribution's docker.io,
#                            --no-install-recommends, plus ca-certificates, curl,
#                            iptables (and apparmor when the kernel has AppArmor
#                            enabled);
#                            docker-ce: Docker's convenience script (get.docker.com).
#   VMDOCK_DOCKER_CE_MIRROR  optional, docker-ce only: passed as --mirror
#                            (e.g. Aliyun, AzureChinaCloud).
#   VMDOCK_GET_DOCKER_URL    optional, docker-ce only: where to fetch the script
#                            (default https://get.docker.com; file:///path works).
#
# The user who ran this script with sudo (SUDO_USER: the SSH login user,
# `vagrant`, the one `vmdock ssh` logs in as) is put in group `docker`, so that
# it runs `docker ps` without sudo as the book's reader does; this holds for
# an installed Docker too.
#
# apt runs with DEBIAN_FRONTEND=noninteractive and waits up to 300 s for the
# dpkg lock (unattended-upgrades at boot).  `apt-get update` runs only when the
# package lists are missing, older than an hour or older than the sources, or
# when an install fails for a missing package.  Where PID 1 is not systemd a
# temporary /usr/sbin/policy-rc.d (exit 101) keeps the package's postinst from
# trying to start the service.
set -euo pipefail

PROG=install-docker
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

SOURCE=${VMDOCK_DOCKER_SOURCE:-debian}
CE_MIRROR=${VMDOCK_DOCKER_CE_MIRROR:-}
GET_DOCKER_URL=${VMDOCK_GET_DOCKER_URL:-https://get.docker.com}
case "$SOURCE" in
    debian|docker-ce) ;;
    *) die "VMDOCK_DOCKER_SOURCE must be 'debian' or 'docker-ce', got: $SOURCE" ;;
esac

# The login user joins group docker (created here if the package did not).
grant_docker_group() {
    local user=${SUDO_USER:-}
    [ -n "$user" ] && [ "$user" != root ] && id "$user" >/dev/null 2>&1 || return 0
    getent group docker >/dev/null || groupadd --system docker
    if ! id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
        usermod -aG docker "$user"
        say "added $user to group docker"
    fi
}

if command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1; then
    say "docker already installed ($(docker --version 2>/dev/null || echo 'version unknown')); nothing to do"
    grant_docker_group
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: only Debian and Ubuntu machines are supported"

LOG_DIR=/var/log/vmdock
LOG=$LOG_DIR/install-docker.log
mkdir -p "$LOG_DIR"
: >"$LOG"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

fail_with_log() {
    if [ -s "$LOG" ]; then
        printf '%s: last lines of %s:\n' "$PROG" "$LOG" >&2
        tail -n 20 "$LOG" | sed 's/^/  /' >&2
    fi
    die "$*"
}

# systemd is PID 1 exactly when this directory exists (sd_booted()).
have_systemd() { [ -d /run/systemd/system ]; }

POLICY=/usr/sbin/policy-rc.d
POLICY_OURS=0
cleanup() {
    if [ "$POLICY_OURS" = 1 ]; then rm -f "$POLICY"; fi
}
trap cleanup EXIT
if ! have_systemd && [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# vmdock install-docker.sh: no service starts during package installs\nexit 101\n' >"$POLICY"
    chmod 0755 "$POLICY"
    POLICY_OURS=1
fi

# apt_get_update comes from provisioners/lib.sh (vmdock puts it in front of this
# script; run by hand, it is sourced from beside the script).
[ "$(type -t apt_get_update)" = function ] || . "$(dirname "$0")/lib.sh"

UPDATED=0
apt_update() {
    say "apt-get update"
    apt_get_update "$LOG" || fail_with_log "apt-get update failed"
    mkdir -p "$(dirname "$STAMP")" && touch "$STAMP"
    UPDATED=1
}

# Lists are stale when missing, older than an hour, or older than the sources.
# The age of an update is not the mtime of the list files (apt gives them the
# server's Last-Modified time), so take the newest of: the success stamp that
# apt-mirror.sh's 90vmdock (and Ubuntu) touch after every update, and the lists
# directory and its partial/ directory, which every update that fetched
# anything modifies.
STAMP=/var/lib/apt/periodic/update-success-stamp
lists_stale() {
    local newest=0 t f src=0
    ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || return 0
    for f in "$STAMP" /var/lib/apt/lists /var/lib/apt/lists/partial; do
        [ -e "$f" ] || continue
        t=$(stat -c %Y "$f")
        [ "$t" -gt "$newest" ] && newest=$t
    done
    [ $(( $(date +%s) - newest )) -gt 3600 ] && return 0
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        t=$(stat -c %Y "$f")
        [ "$t" -gt "$src" ] && src=$t
    done
    [ "$src" -gt "$newest" ]
}

# apt-get install, with one `apt-get update` and retry when a package or a
# package file is missing (stale lists), and waiting (up to 300 s) for locks
# that DPkg::Lock::Timeout does not cover (e.g. /var/cache/apt/archives/lock).
apt_install() {
    local before out said=0 deadline=$(( $(date +%s) + 300 ))
    while :; do
        before=$(wc -c <"$LOG")
        if apt-get "${APT_OPTS[@]}" --no-install-recommends install "$@" >>"$LOG" 2>&1; then
            return 0
        fi
        out=$(tail -c +"$((before + 1))" "$LOG")
        if grep -q "Could not get lock" <<<"$out" && [ "$(date +%s)" -lt "$deadline" ]; then
            [ "$said" = 1 ] || say "waiting for another apt process to release its lock"
            said=1
            sleep 3
            continue
        fi
        if [ "$UPDATED" = 0 ] && grep -qE "Unable to locate package|has no installation candidate|404 +Not Found|Unable to fetch some archives|Failed to fetch" <<<"$out"; then
            say "a package is missing from the package lists; updating them and trying again"
            apt_update
            continue
        fi
        fail_with_log "apt-get install $* failed"
    done
}

start=$(date +%s)
if [ "$SOURCE" = debian ]; then
    pkgs=(docker.io ca-certificates curl iptables)
    if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || true)" = Y ]; then
        pkgs+=(apparmor)
    fi
    if lists_stale; then apt_update; fi
    say "installing ${pkgs[*]} from the distribution (no recommends)"
    apt_install "${pkgs[@]}"
else
    if ! command -v curl >/dev/null 2>&1; then
        if lists_stale; then apt_update; fi
        say "installing ca-certificates curl"
        apt_install ca-certificates curl
    fi
    script=$(mktemp /tmp/get-docker.XXXXXX.sh)
    say "fetching the docker-ce install script from $GET_DOCKER_URL"
    if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$script" "$GET_DOCKER_URL" 2>>"$LOG"; then
        rm -f "$script"
        fail_with_log "cannot download $GET_DOCKER_URL (set VMDOCK_GET_DOCKER_URL to a reachable copy, or use VMDOCK_DOCKER_SOURCE=debian)"
    fi
    args=()
    [ -n "$CE_MIRROR" ] && args+=(--mirror "$CE_MIRROR")
    # The script calls apt-get itself: let it wait for the dpkg lock as well.
    lockconf=/etc/apt/apt.conf.d/00vmdock-lock-timeout
    if ! apt-config dump 2>/dev/null | grep -i '^DPkg::Lock::Timeout ' >/dev/null; then
        echo 'DPkg::Lock::Timeout "300";' >"$lockconf"
        trap 'cleanup; rm -f "$lockconf"' EXIT
    fi
    say "running the docker-ce install script${CE_MIRROR:+ with --mirror $CE_MIRROR}"
    if ! sh "$script" "${args[@]}" >>"$LOG" 2>&1; then
        rm -f "$script"
        fail_with_log "the docker-ce install script failed"
    fi
    rm -f "$script"
fi

{ command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1; } \
    || fail_with_log "the install finished but docker/dockerd are not on PATH"
say "installed $(docker --version) in $(( $(date +%s) - start )) s"
grant_docker_group
