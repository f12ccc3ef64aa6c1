#!/usr/bin/env bash
# The GPU kit: prove the GPU path in one go (see docs/gpu-kit.md).
#
#   bash bench/gpu_check.sh [--dry-run]      # from the repository root
#
# Writes gpu_check.json (a `checks` list: name, passed, figures, seconds), gpu_check.log (the
# tail of every check's log) and estimators-*.json under $OUT, or bench/results/ when $OUT is
# unset. Every check runs in its own process under a time limit; the whole run is capped at
# 8 minutes (GPU) by the timeout below. --dry-run: the same checks on CPU with tiny sizes.
# Exit status: 0 when every check that ran passed, 1 otherwise, 124 when the cap was hit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=$(command -v python3 || command -v python)
fi

cap=470   # seconds: the GPU budget is ~15 minutes per session, so the kit keeps under 8
exec timeout --kill-after=15 "$cap" "$py" bench/gpu_check.py "$@"
