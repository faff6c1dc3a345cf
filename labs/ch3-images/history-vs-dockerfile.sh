#!/bin/bash
# Compare `docker history IMAGE` with the Dockerfile it was built from: one history
# entry per instruction after FROM, in the same order.
#   usage: bash history-vs-dockerfile.sh DOCKERFILE IMAGE
# Prints both lists side by side and exits 1 when they differ.
set -euo pipefail
dockerfile=$1 image=$2

# The Dockerfile's instructions: skip comments and blank lines, join "\" continuations,
# keep what comes after the (last) FROM.
mapfile -t instructions < <(awk '
    cont { if ($0 ~ /^[[:space:]]*(#.*)?$/) next; cont = ($0 ~ /\\[[:space:]]*$/); next }
    /^[[:space:]]*(#.*)?$/ { next }
    { print toupper($1); cont = ($0 ~ /\\[[:space:]]*$/) }' "$dockerfile" | awk '/^FROM$/ { n = 0; delete kw; next } { kw[n++] = $0 } END { for (i = 0; i < n; i++) print kw[i] }')

# The base image's own history entries are at the bottom of the list: skip them.
base=$(awk 'toupper($1) == "FROM" { b = $2 } END { print b }' "$dockerfile")
n_image=$(docker history -q "$image" | wc -l)
n_base=$(docker history -q "$base" | wc -l)
n=$((n_image - n_base))

# history lists newest first; CreatedBy is "/bin/sh -c #(nop) ENV …" / "/bin/sh -c <command>"
# (the classic builder) or "ENV …" / "RUN /bin/sh -c …" (BuildKit)
mapfile -t created < <(docker history --no-trunc --format '{{.CreatedBy}}' "$image" | head -n "$n" | tac)
mapfile -t entries < <(printf '%s\n' "${created[@]}" \
    | sed -E 's@^/bin/sh -c #\(nop\) +@@; t; s@^(\|[0-9]+ .* )?/bin/sh -c .*@RUN@' | awk '{ print toupper($1) }')

echo "$dockerfile: ${#instructions[@]} instructions after FROM $base"
echo "$image: $n_image history entries, $n_base of them from $base, $n from the build"
for i in $(seq 0 $(( (${#instructions[@]} > n ? ${#instructions[@]} : n) - 1 ))); do
    printf '  %-8s | %-8s | %.90s\n' "${instructions[$i]:-}" "${entries[$i]:-}" "${created[$i]:-}"
done
layers=$(docker image inspect -f '{{len .RootFS.Layers}}' "$image")
base_layers=$(docker image inspect -f '{{len .RootFS.Layers}}' "$base")
fs=$(printf '%s\n' "${instructions[@]}" | grep -cE '^(RUN|COPY|ADD)$' || true)
echo "filesystem layers: $layers = $base_layers ($base) + $((layers - base_layers)) (RUN/COPY/ADD instructions: $fs)"
if [ "${instructions[*]}" = "${entries[*]}" ] && [ "$n" -eq "${#instructions[@]}" ]; then
    echo "one history entry per Dockerfile instruction: $n = $n"
else
    echo "history and Dockerfile differ" >&2
    exit 1
fi
