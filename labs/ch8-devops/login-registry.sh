#!/bin/bash
# Make this machine's dockerd trust the registry and log in to it (dev, test and prod).
#   REGISTRY_ADDR  host:port (exported by the 8.2 step)
#   CA_CRT_B64     the lab CA's certificate, base64 (exported by the 8.2 step), or
#                  "none" for a registry with a publicly trusted certificate (a real ACR)
#   REGISTRY_USER, REGISTRY_PASSWORD
set -euo pipefail
: "${REGISTRY_ADDR:?}" "${CA_CRT_B64:?}" "${REGISTRY_USER:?}" "${REGISTRY_PASSWORD:?}"

if [ "$CA_CRT_B64" != none ]; then
    # dockerd trusts a CA for one registry when it finds it at certs.d/<host:port>/ca.crt
    mkdir -p "/etc/docker/certs.d/$REGISTRY_ADDR"
    printf '%s' "$CA_CRT_B64" | base64 -d > "/etc/docker/certs.d/$REGISTRY_ADDR/ca.crt"
    openssl x509 -noout -subject -fingerprint -sha256 -in "/etc/docker/certs.d/$REGISTRY_ADDR/ca.crt"
fi
printf '%s' "$REGISTRY_PASSWORD" | docker login --username "$REGISTRY_USER" --password-stdin "$REGISTRY_ADDR"
