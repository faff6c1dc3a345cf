#!/bin/bash
# 4.2.4 数据卷容器 — start the two nginx containers that share the volume of the data
# volume container ch4-data (--volumes-from). Used by the step that first starts them
# and, unchanged, by the restore of 4.2.5 (after ch4-data was re-created).
# Run from the lab folder: bash run-web.sh   (needs NGINX_IMAGE)
set -euo pipefail
: "${NGINX_IMAGE:?}"
for n in 1 2; do
    docker rm -f "ch4-web$n" >/dev/null 2>&1 || true
    # ch4-web1 on the machine's port 8080, ch4-web2 on 8081 (forwarded to 8040/8041)
    docker run -d --name "ch4-web$n" --volumes-from ch4-data -p "808$((n - 1)):80" "$NGINX_IMAGE" >/dev/null
done
for port in 8080 8081; do
    for _ in $(seq 1 30); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.5; done
    curl -fsS -o /dev/null -w "http://127.0.0.1:$port/ -> %{http_code}\n" "http://127.0.0.1:$port/"
done
