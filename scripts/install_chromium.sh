#!/usr/bin/env bash
# Install headless Chromium for scripts/ui_check.py (idempotent; Debian/Ubuntu, needs root or sudo).
# Not part of setup.sh or CI: only the MLflow UI check needs a browser.
set -euo pipefail
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium: $("$name" --version 2>/dev/null || echo "$name")"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; install Chromium (or Google Chrome) yourself and pass --chromium PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium: $(chromium --version)"
