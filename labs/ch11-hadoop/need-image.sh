#!/bin/bash
# need-image.sh IMAGE... — make each image available in this machine's dockerd.
#
# This lab needs images from a registry (lab.yaml: needs.images). vmdock's preflight
# has already made sure they can be had, in one of two ways:
#   - `vmdock up LAB --images-dir DIR` loaded them from `docker save` tarballs: they are
#     present, and nothing is pulled;
#   - a registry mirror (VMDOCK_REGISTRY_MIRRORS, written to /etc/docker/daemon.json)
#     or Docker Hub itself is reachable: a plain `docker pull` gets them.
# So: `docker image inspect` first, pull only when the image is absent.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: need-image.sh IMAGE..." >&2; exit 2; }

mirrors=$(grep -o '"registry-mirrors"[^]]*]' /etc/docker/daemon.json 2>/dev/null | tr -d '\n' || true)
for image in "$@"; do
    if docker image inspect "$image" >/dev/null 2>&1; then
        echo "$image: present ($(docker image inspect -f '{{.Id}}' "$image" | cut -c8-19)), not pulled"
        continue
    fi
    echo "$image: absent, docker pull ${mirrors:+(daemon.json: $mirrors)}"
    ok=0
    for attempt in 1 2 3; do
        if timeout 900 docker pull "$image"; then ok=1; break; fi
        echo "$image: pull attempt $attempt failed" >&2
        sleep $((attempt * 5))
    done
    if [ "$ok" != 1 ]; then
        cat >&2 <<MSG
need-image: cannot get $image: not loaded in this machine and \`docker pull\` failed.
  Either give the machines a registry mirror: VMDOCK_REGISTRY_MIRRORS=https://<mirror> vmdock up ${VMDOCK_LAB:-LAB}
  (it goes to /etc/docker/daemon.json), or load the image from a tarball: on a machine that has it,
  \`docker save -o DIR/image.tar $image\`, then \`vmdock up ${VMDOCK_LAB:-LAB} --images-dir DIR\`.
MSG
        exit 1
    fi
done
