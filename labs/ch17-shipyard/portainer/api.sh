# shellcheck shell=bash
# portainer/api.sh — sourced by the steps and checks: call Portainer's REST API.
#
# Portainer answers on https://127.0.0.1:9443 with the certificate that the step made
# (portainer/run-portainer.sh), so curl verifies it with --cacert instead of -k.
# Authentication (17.2.1 鉴权): POST /api/auth with the admin's user name and password
# gives a JWT, sent as "Authorization: Bearer <jwt>"; an API key (17.2.4 服务密钥) is
# sent as "X-API-Key: <key>".
PORTAINER_URL=${PORTAINER_URL:-https://127.0.0.1:9443}
PORTAINER_DIR=${PORTAINER_DIR:-/etc/vmdock-portainer}
PORTAINER_CA=$PORTAINER_DIR/tls/portainer.crt

pt_curl() { curl -sS --max-time 30 --cacert "$PORTAINER_CA" "$@"; }

# pt_login → prints a JWT for the admin (the password goes to curl on stdin, not argv)
pt_login() {
    jq -n --arg u admin --arg p "${PORTAINER_ADMIN_PASSWORD:?}" '{username: $u, password: $p}' \
        | pt_curl -f -H 'Content-Type: application/json' --data-binary @- "$PORTAINER_URL/api/auth" \
        | jq -er .jwt
}

# pt_api METHOD PATH [curl args...] → the body; fails on an HTTP error (needs JWT set)
pt_api() {
    local method=$1 path=$2; shift 2
    pt_curl -f -X "$method" -H "Authorization: Bearer ${JWT:?}" "$@" "$PORTAINER_URL$path"
}

# pt_endpoint_id NAME → the Id of the environment (engine) of that name, or nothing
pt_endpoint_id() {
    pt_api GET /api/endpoints | jq -r --arg n "$1" '.[] | select(.Name == $n) | .Id'
}
