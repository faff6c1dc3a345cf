#!/bin/bash
# 8.4 测试 — the test environment's tests, run against a running container.
#   bash tests/smoke.sh URL VERSION ENVIRONMENT
# Stops (exit 1) at the first test that fails.
set -euo pipefail
URL=${1:?usage: smoke.sh URL VERSION ENVIRONMENT} VERSION=${2:?} ENVIRONMENT=${3:?}
URL=${URL%/}

for _ in $(seq 1 30); do curl -fs -o /dev/null "$URL/health" && break; sleep 1; done

passed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { echo "FAIL $1" >&2; exit 1; }

body=$(curl -fsS "$URL/health") || true
[ "$body" = ok ] && ok "GET /health is ok" || fail "GET /health: '$body'"

page=$(curl -fsS "$URL/") || true
grep -qF "ch8-web version $VERSION</h1>" <<<"$page" && ok "GET / shows version $VERSION" || fail "GET / lacks version $VERSION"
grep -qF "environment: $ENVIRONMENT " <<<"$page" && ok "GET / says environment $ENVIRONMENT" || fail "GET / lacks environment $ENVIRONMENT"

doc=$(curl -fsS "$URL/version") || true
grep -qF "\"version\": \"$VERSION\"" <<<"$doc" && ok "GET /version is $VERSION" || fail "GET /version: $doc"

code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/nothing") || true
[ "$code" = 404 ] && ok "GET /nothing is 404" || fail "GET /nothing: $code"

echo "$passed tests passed against $URL"
