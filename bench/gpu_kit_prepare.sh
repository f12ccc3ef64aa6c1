#!/usr/bin/env bash
# Prepare what the GPU kit carries to a GPU machine that reaches no package registry:
#   bench/wheels/    zuko, pydantic (+ pydantic-core, annotated-types, typing-inspection,
#                    typing-extensions), PyYAML, tqdm — Python 3.12 manylinux x86_64 wheels,
#                    the versions installed here (so the GPU runs what the tests ran)
#   bench/kit_data/  a small real-MNIST Parquet dataset (10,000 train / 500 val / 1,000 test rows)
# Both are gitignored; pass them with the device run: carry: ["bench/wheels", "bench/kit_data"].
#
#   bash bench/gpu_kit_prepare.sh        # here, with a registry and the MNIST idx files at hand
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pins=$("$py" - <<'PY'
from importlib.metadata import version
names = ["zuko", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
         "typing-extensions", "PyYAML", "tqdm"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
rm -rf bench/wheels && mkdir -p bench/wheels
# shellcheck disable=SC2086 # $pins is a list of requirement words
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d bench/wheels $pins

rm -rf bench/kit_data/mnist && mkdir -p bench/kit_data
"$py" bench/gpu_steps.py make-data --device cpu --out bench/kit_data/mnist \
  --train-rows 10000 --test-rows 1000

wheels_mb=$(du -sm bench/wheels | cut -f1)
data_mb=$(du -sm bench/kit_data | cut -f1)
tree_mb=$(git ls-files -z | du -cm --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((wheels_mb + data_mb + tree_mb))
echo "bench/wheels ${wheels_mb} MB, bench/kit_data ${data_mb} MB, tracked tree ~${tree_mb} MB: ~${total} MB of the 64 MiB cap"
if ((total > 56)); then
  echo "error: what travels would be ~${total} MB, too close to the 64 MiB cap" >&2
  exit 1
fi
echo 'device run: command "bash bench/gpu_check.sh", carry ["bench/wheels", "bench/kit_data"]'
