#!/bin/bash
# 8.2 部署镜像注册服务器 — a private CA and the registry's server certificate, with openssl.
#
#   bash tls/make-certs.sh DIR IP NAME
#
# DIR/ca/ca.key, DIR/ca/ca.crt   the CA: made once and kept (clients trust it, so a
#                                re-run must not replace it); the key stays root-only
# DIR/secure/server.key, .crt    the registry's key and certificate, signed by the CA,
#                                issued anew on every run; subjectAltName covers
#                                IP (the private address the other machines use),
#                                NAME, localhost and 127.0.0.1
# Docker checks the subjectAltName only (not the CN), like every modern TLS client.
set -euo pipefail
DIR=${1:?usage: make-certs.sh DIR IP NAME} IP=${2:?} NAME=${3:?}
umask 077
mkdir -p "$DIR/ca" "$DIR/secure"
cd "$DIR"

if [ -s ca/ca.key ] && [ -s ca/ca.crt ]; then
    echo "CA: keeping ca/ca.crt ($(openssl x509 -noout -subject -in ca/ca.crt))"
else
    openssl req -x509 -new -nodes -sha256 -days 3650 \
        -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout ca/ca.key -out ca/ca.crt \
        -subj "/O=vmdock/CN=vmdock ch8 registry CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    echo "CA: made ca/ca.crt"
fi
chmod 0644 ca/ca.crt

# the server key and a certificate signing request, then the CA signs it
openssl req -new -nodes -sha256 \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout secure/server.key -out secure/server.csr \
    -subj "/O=vmdock/CN=$NAME"
cat > secure/server.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:$IP, DNS:$NAME, DNS:localhost, IP:127.0.0.1
EXT
openssl x509 -req -sha256 -days 825 -in secure/server.csr \
    -CA ca/ca.crt -CAkey ca/ca.key -CAcreateserial -CAserial ca/ca.srl \
    -extfile secure/server.ext -out secure/server.crt
rm -f secure/server.csr secure/server.ext
chmod 0644 secure/server.crt
openssl verify -CAfile ca/ca.crt secure/server.crt
openssl x509 -noout -subject -issuer -enddate -ext subjectAltName -in secure/server.crt
