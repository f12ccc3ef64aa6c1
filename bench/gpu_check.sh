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

# the interpreter: $PYTHON, else this checkout's .venv, else the first python3/python with torch
py=${PYTHON:-}
if [[ -z "$py" ]]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      py=$candidate
      break
    fi
  done
fi
if [[ -z "$py" ]]; then
  echo "error: no Python with torch found (tried .venv/bin/python, python3, python; set PYTHON)" >&2
  exit 1
fi

cap=470   # seconds: the GPU budget is ~15 minutes per session, so the kit keeps under 8
exec timeout --kill-after=15 "$cap" "$py" bench/gpu_check.py "$@"
