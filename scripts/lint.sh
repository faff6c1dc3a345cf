#!/usr/bin/env bash
# The linters, as CI and .pre-commit-config.yaml run them:
#   ruff check (settings in pyproject.toml), mypy vmdock (pyproject.toml),
#   and, on every shell script git tracks (*.sh and files with a sh/bash
#   shebang), shellcheck with the settings in .shellcheckrc.
# Runs all of them and exits 1 when any reports a finding, 2 when a tool is missing.
#
#   --shell-only    only shellcheck
#   --python-only   only ruff and mypy
#   -h, --help      this text
#
# ruff and mypy come with `pip install -e '.[dev]'`; shellcheck with scripts/host-setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

run_python=1 run_shell=1
for arg in "$@"; do
  case "$arg" in
    --shell-only) run_python=0 ;;
    --python-only) run_shell=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "lint: unknown option $arg (options: --shell-only, --python-only)" >&2; exit 2 ;;
  esac
done

need=()
[ "$run_python" = 0 ] || need+=(ruff mypy)
[ "$run_shell" = 0 ] || need+=(shellcheck)
for tool in "${need[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "lint: $tool is not installed (ruff, mypy: pip install -e '.[dev]'; shellcheck: scripts/host-setup.sh)" >&2
    exit 2
  fi
done

# The tracked shell scripts: *.sh, and extension-less files whose first line is a sh or bash shebang.
shell_files() {
  local f first
  while IFS= read -r -d '' f; do
    [ -f "$f" ] || continue   # deleted in the work tree, not yet in the index
    case "$f" in
      *.sh) printf '%s\0' "$f"; continue ;;
    esac
    IFS= read -r first <"$f" || true
    case "$first" in
      '#!'*/sh|'#!'*/bash|'#!'*'env sh'|'#!'*'env bash'|'#!'*/sh' '*|'#!'*/bash' '*) printf '%s\0' "$f" ;;
    esac
  done < <(git ls-files -z)
}

failed=()
step() {  # step NAME COMMAND...: run it, remember NAME when it fails
  local name=$1; shift
  echo "== $name"
  if "$@"; then
    echo "== $name: clean"
  else
    failed+=("$name")
  fi
}

if [ "$run_python" = 1 ]; then
  step ruff ruff check .
  step mypy mypy vmdock
fi
if [ "$run_shell" = 1 ]; then
  mapfile -d '' scripts < <(shell_files)
  echo "(${#scripts[@]} shell scripts)"
  step shellcheck shellcheck "${scripts[@]}"
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint: findings from: ${failed[*]}" >&2
  exit 1
fi
echo "lint: clean"
