#!/bin/bash
# run-k3s.sh server|agent — (re)start this machine's Kubernetes node: k3s in a container.
#
#   --privileged         a kubelet and a container runtime need the machine's devices,
#                        cgroups and iptables (k3s in Docker always runs like this);
#   --network host       the node's address is the machine's private address, and
#                        flannel's VXLAN between the nodes runs over the private network;
#   --tmpfs /run ...     fresh runtime state at every start (as k3d does);
#   -v k3s-data, k3s-etc the node's state (cluster datastore on the server, images,
#                        the node's password) on named volumes: re-creating the
#                        container keeps the node.
# The node name is k8s-<machine>. An agent needs K3S_URL's server and its token in
# K3S_TOKEN (exported by the server's step).
set -euo pipefail
role=${1:?usage: run-k3s.sh server|agent}
: "${K3S_IMAGE:?}" "${K3S_PAUSE_IMAGE:?}" "${VMDOCK_MACHINE:?}"
var="VMDOCK_IP_${VMDOCK_MACHINE^^}"; var=${var//-/_}
self=${!var:?$var is not set}
iface=$(ip -o -4 addr show | awk -v ip="$self" '{split($4, a, "/"); if (a[1] == ip) print $2}' | sed -n 1p)
[ -n "$iface" ] || { echo "run-k3s: no interface has $self" >&2; exit 1; }
name="k3s-$role"
node="k8s-$VMDOCK_MACHINE"

docker volume create k3s-data >/dev/null
docker volume create k3s-etc >/dev/null
# containerd's overlayfs snapshotter cannot sit on overlayfs (a machine that is itself
# a container may have its docker volumes there): then use the plain "native" one
fstype=$(stat -f -c %T "$(docker volume inspect -f '{{.Mountpoint}}' k3s-data)")
snapshotter=overlayfs
[ "$fstype" != overlayfs ] || snapshotter=native

opts=(--privileged --network host --restart unless-stopped
      --tmpfs /run --tmpfs /var/run
      -v k3s-data:/var/lib/rancher/k3s -v k3s-etc:/etc/rancher)
[ ! -d /lib/modules ] || opts+=(-v /lib/modules:/lib/modules:ro)
args=(--node-name "$node" --node-ip "$self" --flannel-iface "$iface"
      --pause-image "$K3S_PAUSE_IMAGE" --snapshotter "$snapshotter")
if [ "$role" = server ]; then
    args+=(--advertise-address "$self" --tls-san "$self"
           --disable traefik --disable servicelb --disable metrics-server --disable local-storage
           --disable-helm-controller --write-kubeconfig-mode 600)
else
    : "${K3S_URL:?}" "${K3S_TOKEN:?}"
    opts+=(-e K3S_URL -e K3S_TOKEN)   # the token goes in through the environment
fi

docker rm -f "$name" >/dev/null 2>&1 || true
docker run -d --name "$name" "${opts[@]}" "$K3S_IMAGE" "$role" "${args[@]}" >/dev/null
echo "$name: node $node at $self ($iface), snapshotter $snapshotter, $K3S_IMAGE"
