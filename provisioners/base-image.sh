#!/usr/bin/env bash
# vmdock provisioner: make the labs' base image available in this machine's dockerd.
#
# Runs as root inside a machine whose dockerd answers (after start-docker.sh).
# Idempotent: when the image is already there it says so and exits at once.
#
# Order:
#   1. the image is present                      -> "already present"
#   2. VMDOCK_BASE_TARBALL given (or a rootfs this machine built before, at
#      /var/cache/vmdock/rootfs-SUITE.tar)       -> docker import   "loaded from tarball"
#   3. VMDOCK_BASE_PULL=1 and docker pull works  -> "pulled"
#   4. debootstrap --variant=minbase SUITE from the mirror, tarred to
#      /var/cache/vmdock/rootfs-SUITE.tar (for the host to download and cache),
#      then docker import                        -> "built with debootstrap"
# Imported images get CMD ["bash"].  The last line printed is
#   base-image: IMAGE ready (HOW; Debian VERSION)
#
# Environment:
#   VMDOCK_BASE_IMAGE    image tag (default debian:bookworm)
#   VMDOCK_BASE_TARBALL  optional path of a rootfs tarball (plain tar or .gz;
#                        .xz/.bz2 only where xz/bzip2 are installed, which
#                        minbase Debian lacks) already uploaded to this
#                        machine; must exist when set
#   VMDOCK_BASE_PULL     1: try `docker pull` before building; 0 (default): don't
#   VMDOCK_PULL_TIMEOUT  seconds allowed for the pull (default 60)
#   VMDOCK_APT_MIRROR    Debian mirror for debootstrap (default
#                        http://deb.debian.org/debian); it also ends up in the
#                        image's /etc/apt/sources.list
#   VMDOCK_BASE_SUITE    Debian codename to debootstrap (default bookworm)
set -euo pipefail

PROG=base-image
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v docker >/dev/null 2>&1 || die "docker is not installed (run install-docker.sh first)"

IMAGE=${VMDOCK_BASE_IMAGE:-debian:bookworm}
TARBALL=${VMDOCK_BASE_TARBALL:-}
PULL=${VMDOCK_BASE_PULL:-0}
PULL_TIMEOUT=${VMDOCK_PULL_TIMEOUT:-60}
MIRROR=${VMDOCK_APT_MIRROR:-}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${VMDOCK_BASE_SUITE:-bookworm}
CACHE_DIR=/var/cache/vmdock
CACHED_TAR=$CACHE_DIR/rootfs-$SUITE.tar
LOG_DIR=/var/log/vmdock
LOG=$LOG_DIR/base-image.log

case "$PULL" in 0|1) ;; *) die "VMDOCK_BASE_PULL must be 0 or 1, got: $PULL" ;; esac
case "$PULL_TIMEOUT" in ''|*[!0-9]*) die "VMDOCK_PULL_TIMEOUT must be a number of seconds, got: $PULL_TIMEOUT" ;; esac
case "$SUITE" in ''|*[!a-z0-9-]*) die "VMDOCK_BASE_SUITE must be a codename like bookworm, got: $SUITE" ;; esac

timeout 20 docker info >/dev/null 2>&1 || die "dockerd does not answer (run start-docker.sh first)"

t0=$(date +%s)
ready() {
    local version
    version=$(docker run --rm "$IMAGE" cat /etc/debian_version 2>/dev/null) \
        || die "$IMAGE was $1 but cannot run a container: docker run --rm $IMAGE cat /etc/debian_version failed"
    say "$IMAGE ready ($1 in $(( $(date +%s) - t0 )) s; Debian $version)"
    exit 0
}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already present; nothing to do"
    exit 0
fi

mkdir -p "$LOG_DIR"
: >"$LOG"
fail_with_log() {
    if [ -s "$LOG" ]; then
        printf '%s: last lines of %s:\n' "$PROG" "$LOG" >&2
        tail -n 20 "$LOG" | sed 's/^/  /' >&2
    fi
    die "$*"
}

import_tar() {
    say "importing $1 as $IMAGE"
    docker import --change 'CMD ["bash"]' "$1" "$IMAGE" >>"$LOG" 2>&1 \
        || fail_with_log "docker import $1 failed"
}

# 2. a tarball
if [ -n "$TARBALL" ]; then
    { [ -f "$TARBALL" ] && [ -r "$TARBALL" ]; } || die "VMDOCK_BASE_TARBALL=$TARBALL: no such file"
    case "$TARBALL" in
        *.xz|*.txz) command -v xz >/dev/null 2>&1 || die "$TARBALL is xz-compressed and this machine has no xz (upload a plain or .gz tarball)" ;;
        *.bz2|*.tbz2) command -v bzip2 >/dev/null 2>&1 || die "$TARBALL is bzip2-compressed and this machine has no bzip2 (upload a plain or .gz tarball)" ;;
    esac
    import_tar "$TARBALL"
    ready "loaded from tarball"
fi
if [ -s "$CACHED_TAR" ]; then
    import_tar "$CACHED_TAR"
    ready "loaded from tarball"
fi

# 3. a pull
if [ "$PULL" = 1 ]; then
    say "pulling $IMAGE (at most $PULL_TIMEOUT s)"
    if timeout "$PULL_TIMEOUT" docker pull "$IMAGE" >>"$LOG" 2>&1; then
        ready "pulled"
    fi
    say "docker pull $IMAGE failed or timed out ($(tail -n 1 "$LOG" | cut -c1-160)); building it instead"
fi

# 4. debootstrap
# apt_get_update comes from provisioners/lib.sh (vmdock puts it in front of this
# script; run by hand, it is sourced from beside the script).
[ "$(type -t apt_get_update)" = function ] || . "$(dirname "$0")/lib.sh"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-q -y -o DPkg::Lock::Timeout=300)
if ! command -v debootstrap >/dev/null 2>&1 || [ ! -s /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is not installed and there is no apt-get to install it"
    say "installing debootstrap"
    updated=0 said=0 deadline=$(( $(date +%s) + 300 ))
    while :; do
        before=$(wc -c <"$LOG")
        if apt-get "${APT_OPTS[@]}" --no-install-recommends install debootstrap debian-archive-keyring >>"$LOG" 2>&1; then
            break
        fi
        if grep -q "Could not get lock" <(tail -c +"$((before + 1))" "$LOG") && [ "$(date +%s)" -lt "$deadline" ]; then
            [ "$said" = 1 ] || say "waiting for another apt process to release its lock"
            said=1
            sleep 3
            continue
        fi
        [ "$updated" = 0 ] || fail_with_log "cannot install debootstrap"
        say "apt-get update"
        apt_get_update "$LOG" || fail_with_log "apt-get update failed"
        updated=1
    done
fi

mkdir -p "$CACHE_DIR"
ROOT=$CACHE_DIR/rootfs-$SUITE.build
rm -rf "$ROOT" "$CACHED_TAR.part"
# shellcheck disable=SC2317  # shellcheck 0.9 does not see that the EXIT trap calls it
cleanup() { rm -rf "$ROOT" "$CACHED_TAR.part"; }
trap cleanup EXIT
mkdir -p "$ROOT"

say "debootstrap --variant=minbase $SUITE from $MIRROR (a minute or two)"
keyring=()
[ -s /usr/share/keyrings/debian-archive-keyring.gpg ] && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
if ! debootstrap --variant=minbase "${keyring[@]}" "$SUITE" "$ROOT" "$MIRROR" >>"$LOG" 2>&1; then
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 20 "$ROOT/debootstrap/debootstrap.log" >>"$LOG"
    fail_with_log "debootstrap $SUITE from $MIRROR failed"
fi

# Smaller and image-like: no package lists or downloaded .debs (labs run
# apt-get update first, as with the official image).
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb
mkdir -p "$ROOT/var/lib/apt/lists/partial"

say "packing $CACHED_TAR"
tar --numeric-owner -C "$ROOT" -cf "$CACHED_TAR.part" . >>"$LOG" 2>&1 || fail_with_log "tar of the rootfs failed"
mv -f "$CACHED_TAR.part" "$CACHED_TAR"
rm -rf "$ROOT"
import_tar "$CACHED_TAR"
ready "built with debootstrap"
