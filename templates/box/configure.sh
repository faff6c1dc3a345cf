#!/bin/sh
# vmdock box build (vmdock/hostbuild/box_image.py): runs in the new system
# (chroot).  The vagrant user, SSH, networking, GRUB's settings, no apt timers
# racing the provisioning, a machine-id and SSH host keys made anew on each
# VM's first boot.
# $1: the insecure public key file, $2: the root filesystem's UUID,
# $3: the kernel command line, $4: the hostname.
set -eu
key=$1 uuid=$2 cmdline=$3 name=$4
echo "$name" > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" > /etc/hosts
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$uuid" > /etc/fstab
cat > /etc/network/interfaces <<'EOF'
# The management NIC (eth0: net.ifnames=0 on the kernel line) takes DHCP from
# libvirt; Vagrant appends the private network's stanza for eth1.
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
EOF
id vagrant >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group vagrant
echo vagrant:vagrant | chpasswd
passwd --lock root >/dev/null
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant "$key" /home/vagrant/.ssh/authorized_keys
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > /etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
printf 'UseDNS no\nGSSAPIAuthentication no\n' > /etc/ssh/sshd_config.d/vmdock.conf
# Host keys: made on each VM's first boot, not shared by every VM of the box.
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/vmdock-ssh-hostkeys.service <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot (vmdock box)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
systemctl enable vmdock-ssh-hostkeys.service ssh.service >/dev/null 2>&1
# apt's daily timers would take the dpkg lock while vmdock installs Docker.
systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
cat > /etc/default/grub <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="$cmdline"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log /var/log/apt/* /tmp/* /var/tmp/*
mkdir -p /var/lib/apt/lists/partial
