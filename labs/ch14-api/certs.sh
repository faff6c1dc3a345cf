#!/bin/bash
# 14.2: a certificate authority (CA) of our own, a server certificate for dockerd
# and a client certificate for whoever may use the API, made with openssl.
# dockerd with "tlsverify" accepts only clients whose certificate this CA signed.
#   server: $DOCKER_TLS_DIR/{ca.pem, ca-key.pem, server-cert.pem, server-key.pem}
#   client: $CLIENT_CERT_PATH/{ca.pem, cert.pem, key.pem}  (the names DOCKER_CERT_PATH wants)
# Every run makes new keys and certificates (the next step restarts the daemon).
set -euo pipefail
: "${DOCKER_TLS_DIR:?}" "${CLIENT_CERT_PATH:?}" "${VMDOCK_IP_DOCKER:?}"
DAYS=365
S=$DOCKER_TLS_DIR C=$CLIENT_CERT_PATH
umask 077                                   # private keys: readable by root only
mkdir -p "$S" "$C"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
serial() { echo "0x$(openssl rand -hex 16)"; }

# 1. the CA: a self-signed certificate that may sign others
newkey "$S/ca-key.pem"
openssl req -x509 -new -sha256 -days "$DAYS" -key "$S/ca-key.pem" -set_serial "$(serial)" \
    -subj "/CN=vmdock ch14 Docker CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$S/ca.pem"

# 2. the server certificate: valid for the names and addresses clients will dial
newkey "$S/server-key.pem"
openssl req -new -key "$S/server-key.pem" -subj "/CN=$(hostname)" -out "$work/server.csr"
cat >"$work/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$(hostname),DNS:localhost,IP:$VMDOCK_IP_DOCKER,IP:127.0.0.1
EXT
openssl x509 -req -sha256 -days "$DAYS" -in "$work/server.csr" -CA "$S/ca.pem" -CAkey "$S/ca-key.pem" \
    -set_serial "$(serial)" -extfile "$work/server.ext" -out "$S/server-cert.pem"

# 3. the client certificate: extendedKeyUsage clientAuth
newkey "$C/key.pem"
openssl req -new -key "$C/key.pem" -subj "/CN=ch14-client" -out "$work/client.csr"
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$work/client.ext"
openssl x509 -req -sha256 -days "$DAYS" -in "$work/client.csr" -CA "$S/ca.pem" -CAkey "$S/ca-key.pem" \
    -set_serial "$(serial)" -extfile "$work/client.ext" -out "$C/cert.pem"
cp "$S/ca.pem" "$C/ca.pem"

chmod 0644 "$S/ca.pem" "$S/server-cert.pem" "$C/ca.pem" "$C/cert.pem"
openssl verify -CAfile "$S/ca.pem" "$S/server-cert.pem" "$C/cert.pem"
for f in "$S/ca.pem" "$S/server-cert.pem" "$C/cert.pem"; do
    echo "== $f"
    openssl x509 -noout -subject -issuer -enddate -ext subjectAltName,extendedKeyUsage -in "$f" 2>/dev/null | sed 's/^/   /'
done
ls -l "$S" "$C"
