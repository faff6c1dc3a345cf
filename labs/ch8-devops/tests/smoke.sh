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
if [ "$body" = ok ]; then ok "GET /health is ok"; else fail "GET /health: '$body'"; fi

page=$(curl -fsS "$URL/") || true
if grep -qF "ch8-web version $VERSION</h1>" <<<"$page"; then ok "GET / shows version $VERSION"; else fail "GET / lacks version $VERSION"; fi
if grep -qF "environment: $ENVIRONMENT " <<<"$page"; then ok "GET / says environment $ENVIRONMENT"; else fail "GET / lacks environment $ENVIRONMENT"; fi

doc=$(curl -fsS "$URL/version") || true
if grep -qF "\"version\": \"$VERSION\"" <<<"$doc"; then ok "GET /version is $VERSION"; else fail "GET /version: $doc"; fi

code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/nothing") || true
if [ "$code" = 404 ]; then ok "GET /nothing is 404"; else fail "GET /nothing: $code"; fi

echo "$passed tests passed against $URL"
