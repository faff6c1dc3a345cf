#!/bin/bash
# Start an sshd container from IMAGE, published on the machine's 127.0.0.1:PORT,
# record its host key in $KEY_DIR/known_hosts (read from the container itself with
# docker exec, so the first ssh needs no "are you sure?"), and log in with the key.
#   usage: bash run-ssh-container.sh NAME IMAGE PORT
# (the container's hostname is NAME, so `ssh … hostname` tells which one answered)
set -euo pipefail
name=$1 image=$2 port=$3
: "${KEY_DIR:?}"

docker rm -f "$name" >/dev/null 2>&1 || true
docker run -d --name "$name" --hostname "$name" -p "127.0.0.1:$port:22" "$image" >/dev/null

# wait for the container's host key (made by run-sshd at its first start)
for _ in $(seq 1 50); do
    docker exec "$name" test -s /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null && break
    sleep 0.2
done
hostkey=$(docker exec "$name" cat /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $1, $2}')
touch "$KEY_DIR/known_hosts"
ssh-keygen -R "[127.0.0.1]:$port" -f "$KEY_DIR/known_hosts" >/dev/null 2>&1 || true
echo "[127.0.0.1]:$port $hostkey" >> "$KEY_DIR/known_hosts"
rm -f "$KEY_DIR/known_hosts.old"
echo "$name: host key $(ssh-keygen -lf <(echo "$hostkey") | awk '{print $2}')"

opts=(-F /dev/null -p "$port" -i "$KEY_DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
      -o UserKnownHostsFile="$KEY_DIR/known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5)
for _ in $(seq 1 30); do
    ssh "${opts[@]}" root@127.0.0.1 true 2>/dev/null && break
    sleep 0.5
done
echo "+ ssh -p $port -i $KEY_DIR/id_ed25519 root@127.0.0.1 hostname"
ssh "${opts[@]}" root@127.0.0.1 hostname
