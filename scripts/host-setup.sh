#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host for vmdock's docker provider and its tests:
# Vagrant, docker.io, debootstrap, shellcheck (scripts/lint.sh), and a running
# dockerd.  Idempotent.
# Run as root (or with sudo).  Works where systemd is PID 1 and where it is not.
#
#   --libvirt   also prepare real VMs with libvirt: vagrant-libvirt, libvirtd,
#               qemu (KVM or TCG), the tools `vmdock box build` uses, the
#               daemons running, /dev/kvm usable by group kvm, and the libvirt
#               `default` storage pool and network.
set -euo pipefail

log() { printf '[host-setup] %s\n' "$*"; }

WANT_LIBVIRT=0
for arg in "$@"; do
  case "$arg" in
    --libvirt) WANT_LIBVIRT=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "host-setup: unknown option $arg (options: --libvirt)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi

have_systemd() { [ "$(ps -o comm= -p 1 2>/dev/null)" = "systemd" ]; }

export DEBIAN_FRONTEND=noninteractive
PKGS=(vagrant docker.io debootstrap openssh-client iptables ca-certificates curl python3-venv python3-pip shellcheck)
if [ "$WANT_LIBVIRT" = 1 ]; then
  # vagrant-libvirt and libvirtd; qemu (TCG when KVM is unusable); dnsmasq and
  # iptables/ebtables for libvirt's NAT networks; what `vmdock box build` uses:
  # debootstrap, sfdisk (fdisk), mkfs.ext4, partx/losetup, qemu-img.
  PKGS+=(vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
         dnsmasq-base ebtables iptables fdisk e2fsprogs util-linux debian-archive-keyring)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -q
  # Without systemd the packages' postinst cannot start their services; they
  # are started below.
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "packages present"
fi

docker_up() { docker info >/dev/null 2>&1; }
if docker_up; then
  log "dockerd answers"
else
  if have_systemd; then
    log "starting docker (systemd)"
    systemctl enable --now docker
  else
    log "starting dockerd (no systemd: background process, log /var/log/dockerd.log)"
    setsid nohup dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do docker_up && break; sleep 1; done
  if ! docker_up; then
    log "dockerd did not come up; last lines of its log:" >&2
    tail -n 20 /var/log/dockerd.log >&2 || true
    exit 1
  fi
  log "dockerd answers"
fi

[ "$WANT_LIBVIRT" = 1 ] || exit 0

# ---------------------------------------------------------------------------
# libvirt

# /dev/kvm: group kvm, 0660 (what udev does on a normal host).  Left at
# root:root 0600, libvirt cannot tell whether qemu may use KVM and re-probes
# the qemu binary on every lookup: defining a domain took 48 s instead of 0.03 s.
if [ -e /dev/kvm ]; then
  getent group kvm >/dev/null || groupadd --system kvm
  if ! { chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; }; then
    log "could not chgrp/chmod /dev/kvm (read-only /dev?)"
  fi
  log "/dev/kvm: $(stat -c '%G %a' /dev/kvm)"
else
  log "no /dev/kvm: libvirt VMs run with TCG (software emulation)"
fi

virsh_ok() { virsh -c qemu:///system version >/dev/null 2>&1; }
if have_systemd; then
  log "starting virtlogd and libvirtd (systemd)"
  systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 || true
  systemctl enable --now virtlogd libvirtd
else
  # No systemd as PID 1: start the daemons by hand, in the background.
  if ! pgrep -x virtlogd >/dev/null; then
    log "starting virtlogd (no systemd: background process)"
    virtlogd --daemon
  fi
  if ! virsh_ok; then
    pgrep -x libvirtd >/dev/null && { log "libvirtd runs but does not answer: restarting it"; pkill -x libvirtd || true; sleep 2; }
    log "starting libvirtd (no systemd: background process, log /var/log/libvirtd.log)"
    mkdir -p /var/run/libvirt
    setsid nohup libvirtd >/var/log/libvirtd.log 2>&1 </dev/null &
  fi
fi
for _ in $(seq 1 60); do virsh_ok && break; sleep 1; done
if ! virsh_ok; then
  log "libvirtd does not answer; last lines of its log:" >&2
  tail -n 20 /var/log/libvirtd.log >&2 || true
  exit 1
fi
log "libvirtd answers ($(virsh -c qemu:///system version 2>/dev/null | sed -n 's/^Running hypervisor: //p'))"

export LIBVIRT_DEFAULT_URI=qemu:///system
# The `default` storage pool: vagrant-libvirt uploads boxes and creates disks there.
if ! virsh pool-info default >/dev/null 2>&1; then
  log "defining the libvirt storage pool default (/var/lib/libvirt/images)"
  mkdir -p /var/lib/libvirt/images
  virsh pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
fi
# (output captured first: with pipefail, `virsh … | grep -q` fails when grep stops reading early)
pool_state=$(virsh pool-info default | awk '/^State:/{print $2}')
[ "$pool_state" = running ] || virsh pool-start default >/dev/null
virsh pool-autostart default >/dev/null 2>&1 || true

# The `default` NAT network (libvirt-daemon-config-network ships its XML).
# vagrant-libvirt makes its own management network (vagrant-libvirt,
# 192.168.121.0/24) and one per private_network, but the default network is
# what `virsh` users and many boxes expect.
if ! virsh net-info default >/dev/null 2>&1; then
  xml=/usr/share/libvirt/networks/default.xml
  if [ -f "$xml" ]; then
    log "defining the libvirt network default"
    virsh net-define "$xml" >/dev/null
  fi
fi
if virsh net-info default >/dev/null 2>&1; then
  net_active=$(virsh net-info default | awk '/^Active:/{print $2}')
  [ "$net_active" = yes ] || virsh net-start default >/dev/null || log "could not start the network default"
  virsh net-autostart default >/dev/null 2>&1 || true
fi
log "libvirt ready: pool default $(virsh pool-info default | awk '/^State/{print $2}'), network default $(virsh net-info default 2>/dev/null | awk '/^Active/{print ($2=="yes")?"active":"inactive"}')"
