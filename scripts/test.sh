#!/usr/bin/env bash
# Run the test suite (the README's test command): ruff, the import layers, the strict docs build,
# then pytest. pytest's "no tests collected" (exit 5) fails.
#   bash scripts/test.sh            # everything (what .ci/run runs)
#   bash scripts/test.sh --fast     # the edit loop: no slow Ray training tests (-m "not slow")
#   bash scripts/test.sh ARGS…      # any other arguments go to pytest
set -uo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
.venv/bin/ruff check rfdist tests bench jobs cluster scripts || exit 1
.venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
docs_out="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -q -d "$docs_out" || { rm -rf "$docs_out"; echo "error: mkdocs build --strict failed" >&2; exit 1; }
rm -rf "$docs_out"
.venv/bin/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder --durations=25 ${args[@]+"${args[@]}"}  # keep conftest's longest-first order; the 25 slowest, for where CI time goes
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
