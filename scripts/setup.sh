#!/usr/bin/env bash
# Create .venv and install rfdist with everything its tests need. Idempotent.
#   bash scripts/setup.sh            # library + CLI + test and docs tools
# pyproject.toml declares version ranges; constraints.txt holds the exact versions rfdist is tested
# with, and every install here goes through it (`pip install -c constraints.txt`).
# torch goes first (with pip), as the CPU wheel of the pinned version: a bare `torch` requirement can pull a
# multi-GB CUDA build. On a GPU machine install the matching CUDA wheel of that version instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt uv 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt torch 2>&1 | grep -v "^WARNING: Location" || true
# this project was once installed as distribution `rfdist` (a name another project owns on the index)
if .venv/bin/python -m pip show -q rfdist >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y rfdist 2>&1 | grep -v "^WARNING" || true
fi
# uv resolves and installs the ~190 other packages faster than pip (the same versions);
# --compile-bytecode as pip does: without .pyc files (and PYTHONDONTWRITEBYTECODE set) every
# process compiles what it imports again (`import mlflow, ray.train.torch`: 11.0 s against 5.6 s).
# torch stays with pip, which takes the pinned CPU wheel (uv would fetch a CUDA one).
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -c constraints.txt -e ".[test,docs]"
.venv/bin/python -c "import importlib.metadata as m, rfdist, torch, ray, mlflow; print('rfdist-flows', m.version('rfdist-flows'), '| torch', torch.__version__, '| ray', ray.__version__, '| mlflow', mlflow.__version__)"
if [ -f scripts/install_datasets.sh ]; then
  bash scripts/install_datasets.sh
fi
