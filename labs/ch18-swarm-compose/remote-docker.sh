#!/bin/bash
# 18.1 Machine — on a worker: let the manager drive this machine's Docker over SSH,
# the way `docker context create --docker host=ssh://…` expects (what docker-machine
# did with TLS on port 2376). Run from the lab folder as `bash remote-docker.sh`;
# needs MANAGER_SSH_PUBKEY (exported by the manager's step). Prints this machine's SSH
# host key, which the step exports, so the manager pins it in known_hosts.
#
# The account (REMOTE_USER, "dockerctl") is in the group docker (which is root-equivalent: keep such
# keys as safe as root's). Its key may do ONE thing: `docker system dial-stdio`, the
# command the docker CLI runs over SSH to reach /var/run/docker.sock; no shell, no
# port forwarding, no pty.
set -euo pipefail
: "${MANAGER_SSH_PUBKEY:?}"
USER_NAME=${REMOTE_USER:-dockerctl}   # lab env

id "$USER_NAME" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$USER_NAME"
usermod -aG docker "$USER_NAME"
# '*' = no password login, but not "locked" ('!'), which sshd without PAM refuses outright
usermod --password '*' "$USER_NAME"
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$home/.ssh"
printf 'restrict,command="docker system dial-stdio" %s\n' "$MANAGER_SSH_PUBKEY" > "$home/.ssh/authorized_keys.new"
chown "$USER_NAME:$USER_NAME" "$home/.ssh/authorized_keys.new"
chmod 0600 "$home/.ssh/authorized_keys.new"
mv -f "$home/.ssh/authorized_keys.new" "$home/.ssh/authorized_keys"
echo "$USER_NAME@$(hostname): authorized the manager's key for 'docker system dial-stdio' only" >&2

# the host key the manager will expect (key type and key, without the comment)
cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub
