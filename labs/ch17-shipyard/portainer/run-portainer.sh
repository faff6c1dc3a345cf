#!/bin/bash
# run-portainer.sh — (re)start Portainer CE, the web UI that replaces Shipyard.
#
#   - a TLS certificate of its own for https://127.0.0.1:9443 (made once, kept in
#     /etc/vmdock-portainer/tls), so clients verify it; plain HTTP (9000) is disabled;
#   - the admin's password is this lab instance's secret PORTAINER_ADMIN_PASSWORD:
#     --admin-password takes its bcrypt hash, made here with htpasswd -B (the password
#     goes in on stdin, never on a command line); Portainer uses it only when its data
#     volume holds no admin yet (the first start);
#   - the Docker socket is mounted: Portainer manages the engine of this machine.
set -euo pipefail
: "${PORTAINER_IMAGE:?}" "${PORTAINER_ADMIN_PASSWORD:?}" "${VMDOCK_IP_DOCKER:?}"
dir=/etc/vmdock-portainer
install -d -m 0700 "$dir" "$dir/tls"
if [ ! -s "$dir/tls/portainer.crt" ] || [ ! -s "$dir/tls/portainer.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -sha256 \
        -keyout "$dir/tls/portainer.key" -out "$dir/tls/portainer.crt" \
        -subj "/CN=portainer.ch17-shipyard" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$VMDOCK_IP_DOCKER" 2>/dev/null
    chmod 0600 "$dir/tls/portainer.key"
fi
openssl x509 -in "$dir/tls/portainer.crt" -noout -subject -ext subjectAltName

hash=$(printf '%s\n' "$PORTAINER_ADMIN_PASSWORD" | htpasswd -niB -C 10 admin | cut -d: -f2-)
# shellcheck disable=SC2016  # the $ are literal: a bcrypt hash starts with $2?$
case "$hash" in '$2'?'$'*) ;; *) echo "run-portainer: htpasswd gave no bcrypt hash" >&2; exit 1 ;; esac
echo "admin password: bcrypt hash ${hash:0:7}… (cost 10)"

docker rm -f portainer >/dev/null 2>&1 || true
docker volume create portainer_data >/dev/null
docker run -d --name portainer --restart unless-stopped \
    -p 9443:9443 \
    -v /var/run/docker.sock:/var/run/docker.sock \
    -v portainer_data:/data \
    -v "$dir/tls":/certs:ro \
    "$PORTAINER_IMAGE" \
    --admin-password "$hash" \
    --sslcert /certs/portainer.crt --sslkey /certs/portainer.key \
    --http-disabled >/dev/null

# ready = the API answers over TLS
for _ in $(seq 1 60); do
    if curl -fsS --max-time 5 --cacert "$dir/tls/portainer.crt" https://127.0.0.1:9443/api/system/status; then
        echo; exit 0
    fi
    [ "$(docker inspect -f '{{.State.Running}}' portainer)" = true ] || break
    sleep 2
done
docker logs --tail 40 portainer >&2
echo "run-portainer: Portainer did not answer on https://127.0.0.1:9443" >&2
exit 1
