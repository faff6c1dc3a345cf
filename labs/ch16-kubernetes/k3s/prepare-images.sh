#!/bin/bash
# prepare-images.sh — the images k3s needs on this node, handed to k3s's own containerd.
#
# k3s runs its pods in its own containerd, not in the machine's dockerd, and this lab
# gives that containerd no registry at all: on its first start k3s imports every
# tarball in /var/lib/rancher/k3s/agent/images/ (on the volume k3s-data). This puts
# there, in one `docker save` tarball:
#   - the pause image (every pod's sandbox) and CoreDNS (cluster DNS): the only system
#     images left with traefik, servicelb, metrics-server and local-storage disabled;
#     they match K3S_IMAGE's version and come from this machine's dockerd, where
#     need-image.sh put them (loaded by --images-dir, or pulled through a mirror);
#   - the example application, built here FROM the lab's base image.
set -euo pipefail
: "${K3S_IMAGE:?}" "${K3S_PAUSE_IMAGE:?}" "${K3S_COREDNS_IMAGE:?}" "${WEB_IMAGE:?}"
bash need-image.sh "$K3S_IMAGE" "$K3S_PAUSE_IMAGE" "$K3S_COREDNS_IMAGE"
docker build --build-arg BASE_IMAGE="${VMDOCK_BASE_IMAGE:-debian:bookworm}" -t "$WEB_IMAGE" web/
docker volume create k3s-data >/dev/null
mp=$(docker volume inspect -f '{{.Mountpoint}}' k3s-data)
mkdir -p "$mp/agent/images"
docker save -o "$mp/agent/images/vmdock-images.tar.part" "$K3S_PAUSE_IMAGE" "$K3S_COREDNS_IMAGE" "$WEB_IMAGE"
mv -f "$mp/agent/images/vmdock-images.tar.part" "$mp/agent/images/vmdock-images.tar"
ls -l "$mp/agent/images/"
