#!/bin/bash
# 8.4 测试 / 8.5 部署 — pull an image from the registry and (re)start the app from it.
#   bash deploy.sh CONTAINER PUBLISH VERSION EXPECTED_REF ENVIRONMENT
#     CONTAINER     container name (ch8-web-test, ch8-web)
#     PUBLISH       docker run -p value (host port:8000)
#     VERSION       image tag
#     EXPECTED_REF  repo@sha256:... that this machine must get (what dev pushed, what
#                   test tested): a different digest stops the deployment
#     ENVIRONMENT   APP_ENV for the app
# Needs REGISTRY_ADDR (exported by 8.2), REGISTRY_NAMESPACE, APP_NAME (lab env).
set -euo pipefail
CONTAINER=${1:?} PUBLISH=${2:?} VERSION=${3:?} EXPECTED=${4:?} ENVIRONMENT=${5:?}
REPO="$REGISTRY_ADDR/$REGISTRY_NAMESPACE/$APP_NAME"

docker pull "$REPO:$VERSION"
got=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$REPO:$VERSION" | grep -m1 "^$REPO@" || true)
if [ "$got" != "$EXPECTED" ]; then
    echo "deploy: $REPO:$VERSION is $got, expected $EXPECTED: not deploying" >&2
    exit 1
fi
echo "deploy: $REPO:$VERSION is $got, as expected"

if docker inspect "$CONTAINER" >/dev/null 2>&1; then
    echo "deploy: replacing $CONTAINER (was $(docker inspect -f '{{.Config.Image}}' "$CONTAINER"))"
    docker rm -f "$CONTAINER" >/dev/null
fi
docker run -d --name "$CONTAINER" --restart unless-stopped \
    -p "$PUBLISH" -e APP_ENV="$ENVIRONMENT" \
    --label vmdock.ch8.digest="$got" \
    "$REPO:$VERSION"
