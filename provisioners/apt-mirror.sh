#!/usr/bin/env bash
# vmdock provisioner: apt settings and (optionally) a Debian mirror.
#
# Runs as root inside a machine (Debian 12 / Ubuntu 22.04+, with or without
# systemd).  Idempotent: a second run with the same environment changes nothing
# and does not run `apt-get update`.
#
# Always writes /etc/apt/apt.conf.d/90vmdock (retries, timeouts, no
# recommends/suggests, dpkg lock timeout, ignore *.vmdock-orig files).
#
# Environment:
#   VMDOCK_APT_MIRROR           optional URL of a Debian mirror, e.g.
#                               https://mirrors.tuna.tsinghua.edu.cn/debian.
#                               Unset or empty: sources are left alone.
#   VMDOCK_APT_SECURITY_MIRROR  optional URL of a debian-security mirror.  Unset:
#                               the machine's security entries are kept as they are.
#   VMDOCK_APT_SUITE            optional codename (default: VERSION_CODENAME
#                               from /etc/os-release).
#   VMDOCK_APT_SOURCES          optional path of the debian.sources rendered from
#                               templates/debian.sources.j2 (default
#                               /tmp/vmdock/debian.sources).  When the file is
#                               there it is installed as
#                               /etc/apt/sources.list.d/debian.sources; when it is
#                               not, the script writes the same text itself.
#   VMDOCK_APT_UPDATE           1 (default): run `apt-get update` after the
#                               sources changed (and roll them back if it fails);
#                               0: don't.
#
# With a mirror, Debian's main suites (SUITE, SUITE-updates, SUITE-backports,
# SUITE-proposed-updates) are commented out of /etc/apt/sources.list and served
# from sources.list.d/debian.sources instead.  The first run keeps the originals
# as /etc/apt/sources.list.vmdock-orig and
# /etc/apt/sources.list.d/debian.sources.vmdock-orig; every run computes the new
# files from those, so changing the mirror later works too.
set -euo pipefail

PROG=apt-mirror
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: not a Debian/Ubuntu machine"

MIRROR=${VMDOCK_APT_MIRROR:-}
SEC_MIRROR=${VMDOCK_APT_SECURITY_MIRROR:-}
UPLOADED=${VMDOCK_APT_SOURCES:-/tmp/vmdock/debian.sources}
DO_UPDATE=${VMDOCK_APT_UPDATE:-1}

LIST=/etc/apt/sources.list
DEB822=/etc/apt/sources.list.d/debian.sources
CONF=/etc/apt/apt.conf.d/90vmdock

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Write $2 (a file) to $1 only when it differs; returns 0 when it wrote.
install_if_changed() {
    local dest=$1 src=$2 mode=${3:-0644}
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return 1
    fi
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest.vmdock-new"
    mv -f "$dest.vmdock-new" "$dest"
    return 0
}

# apt_get_update comes from provisioners/lib.sh (vmdock puts it in front of this
# script; run by hand, it is sourced from beside the script).
[ "$(type -t apt_get_update)" = function ] || . "$(dirname "$0")/lib.sh"

# --- apt.conf ---------------------------------------------------------------
cat >"$TMP/90vmdock" <<'EOF'
// Written by vmdock (provisioners/apt-mirror.sh).
Acquire::Retries "5";
Acquire::http::Timeout "30";
Acquire::https::Timeout "30";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Lock::Timeout "300";
// Lets provisioners tell how old the package lists are (as on Ubuntu).
APT::Update::Post-Invoke-Success { "touch /var/lib/apt/periodic/update-success-stamp 2>/dev/null || true"; };
Dir::Ignore-Files-Silently:: "\.vmdock-orig$";
Dir::Ignore-Files-Silently:: "\.vmdock-new$";
EOF
if install_if_changed "$CONF" "$TMP/90vmdock"; then
    say "wrote $CONF (retries, no recommends, dpkg lock timeout)"
else
    say "$CONF up to date"
fi

# --- mirror -----------------------------------------------------------------
if [ -z "$MIRROR" ]; then
    say "VMDOCK_APT_MIRROR not set; sources left as they are"
    exit 0
fi
case "$MIRROR" in
    http://*|https://*|file:/*|ftp://*) ;;
    *) die "VMDOCK_APT_MIRROR must be a URL (http://, https://, file:/), got: $MIRROR" ;;
esac
case "$MIRROR$SEC_MIRROR" in
    *[[:space:]]*) die "mirror URLs must not contain whitespace" ;;
esac

OS_ID=$( . /etc/os-release 2>/dev/null && echo "${ID:-}" )
if [ "$OS_ID" != debian ]; then
    say "this is ${OS_ID:-an unknown distribution}, not Debian: a Debian mirror does not apply; sources left as they are"
    exit 0
fi
SUITE=${VMDOCK_APT_SUITE:-$( . /etc/os-release && echo "${VERSION_CODENAME:-}" )}
[ -n "$SUITE" ] || die "cannot tell the Debian codename (no VERSION_CODENAME in /etc/os-release); set VMDOCK_APT_SUITE"

# Originals, once.  An empty backup stands for "there was no such file".
for f in "$LIST" "$DEB822"; do
    if [ ! -e "$f.vmdock-orig" ]; then
        if [ -e "$f" ]; then cp -p "$f" "$f.vmdock-orig"; else : >"$f.vmdock-orig"; fi
        say "kept the original $f as $f.vmdock-orig"
    fi
done

# The new debian.sources: the uploaded rendering of debian.sources.j2, or the
# same text written here.
if [ -s "$UPLOADED" ]; then
    cp "$UPLOADED" "$TMP/rendered"
    [ -z "$(tail -c1 "$TMP/rendered")" ] || echo >>"$TMP/rendered"
    grep -qiE '^URIs:' "$TMP/rendered" || die "$UPLOADED does not look like a deb822 sources file"
    # a file left from an earlier run for another mirror must not win
    awk -v m="${MIRROR%/}" 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) { u = $i; sub(/\/$/, "", u); if (u == m) found = 1 } }
                           END { exit !found }' "$TMP/rendered" \
        || die "$UPLOADED does not use VMDOCK_APT_MIRROR=$MIRROR (rendered for another mirror?)"
    from="from $UPLOADED"
else
    {
        echo "# Written by vmdock (provisioners/apt-mirror.sh); the original is kept as"
        echo "# debian.sources.vmdock-orig beside this file."
        echo "Types: deb"
        echo "URIs: $MIRROR"
        echo "Suites: $SUITE $SUITE-updates"
        echo "Components: main"
        echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        if [ -n "$SEC_MIRROR" ]; then
            echo
            echo "Types: deb"
            echo "URIs: $SEC_MIRROR"
            echo "Suites: $SUITE-security"
            echo "Components: main"
            echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        fi
    } >"$TMP/rendered"
    from="(built in; no $UPLOADED)"
fi

# Does the new file serve the security suite itself?
if grep -iE '^Suites:' "$TMP/rendered" | grep -E -- '-security([[:space:]]|$)' >/dev/null; then
    SEC_REPLACED=1
else
    SEC_REPLACED=0
fi

# Security stanzas of the original debian.sources that stay.
: >"$TMP/kept"
if [ "$SEC_REPLACED" = 0 ]; then
    awk 'BEGIN { RS = "" }
         {
           n = split($0, lines, "\n"); suites = ""
           for (i = 1; i <= n; i++)
             if (tolower(lines[i]) ~ /^suites:/) { suites = lines[i]; sub(/^[^:]*:[ \t]*/, "", suites) }
           if (suites == "") next
           m = split(suites, s, /[ \t]+/); sec = 1
           for (j = 1; j <= m; j++) if (s[j] != "" && s[j] !~ /(-security|\/updates)$/) sec = 0
           if (sec) { if (out++) printf "\n"; print }
         }' "$DEB822.vmdock-orig" >"$TMP/kept"
fi
cp "$TMP/rendered" "$TMP/debian.sources"
if [ -s "$TMP/kept" ]; then
    { echo; echo "# Kept from the original debian.sources (security suite)."; cat "$TMP/kept"; } >>"$TMP/debian.sources"
fi

# The new sources.list: the original, with the Debian main suites (and the
# security suite when it is replaced) commented out.
awk -v suite="$SUITE" -v secrep="$SEC_REPLACED" '
    function is_main(s) { return s == suite || s == suite "-updates" || s == suite "-backports" || s == suite "-proposed-updates" }
    function is_sec(s)  { return s == suite "-security" || s == suite "/updates" }
    /^[ \t]*deb(-src)?[ \t]/ {
        line = $0
        sub(/^[ \t]*deb(-src)?[ \t]+/, "", line)
        if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)
        split(line, f, /[ \t]+/)
        if (is_main(f[2]) || (secrep == 1 && is_sec(f[2]))) {
            if (!said) { print "# vmdock: Debian suites are served from sources.list.d/debian.sources"; said = 1 }
            print "#vmdock# " $0
            next
        }
    }
    { print }' "$LIST.vmdock-orig" >"$TMP/sources.list"

# Anything to do?
changed=0
if [ ! -e "$LIST" ] && [ ! -s "$TMP/sources.list" ]; then
    :   # there was no sources.list and there is nothing to put in one
elif [ ! -f "$LIST" ] || ! cmp -s "$TMP/sources.list" "$LIST"; then
    changed=1
fi
if [ ! -f "$DEB822" ] || ! cmp -s "$TMP/debian.sources" "$DEB822"; then
    changed=1
fi
sec_note=$([ "$SEC_REPLACED" = 1 ] && echo "security suite from the new file" || echo "security suite unchanged")
if [ "$changed" = 0 ]; then
    say "sources already use $MIRROR for $SUITE ($sec_note); nothing to do"
    exit 0
fi

# Keep what is there now, to roll back if apt cannot use the mirror.
for f in "$LIST" "$DEB822"; do
    b="$TMP/prev.$(basename "$f")"
    if [ -e "$f" ]; then cp -p "$f" "$b"; else rm -f "$b"; fi
done
rollback() {
    for f in "$LIST" "$DEB822"; do
        b="$TMP/prev.$(basename "$f")"
        if [ -e "$b" ]; then cp -p "$b" "$f"; else rm -f "$f"; fi
    done
}

if [ -e "$LIST" ] || [ -s "$TMP/sources.list" ]; then
    install_if_changed "$LIST" "$TMP/sources.list" || true
fi
install_if_changed "$DEB822" "$TMP/debian.sources" || true
say "Debian $SUITE suites now come from $MIRROR ($sec_note); debian.sources $from"

if [ "$DO_UPDATE" = 0 ]; then
    say "VMDOCK_APT_UPDATE=0: not running apt-get update"
    exit 0
fi
say "apt-get update"
# apt-get update exits 0 when some index could not be fetched; only our mirrors
# count here (a broken third-party repository is not this script's business).
update_ok=1
: >"$TMP/update.log"
apt_get_update "$TMP/update.log" || update_ok=0
for url in "$MIRROR" ${SEC_MIRROR:+"$SEC_MIRROR"}; do
    grep -qF -- "Failed to fetch ${url%/}/" "$TMP/update.log" && update_ok=0
done
if [ "$update_ok" = 0 ]; then
    rollback
    tail -n 15 "$TMP/update.log" >&2
    die "apt-get update failed with mirror $MIRROR; the previous sources were put back"
fi
say "apt-get update ok"
