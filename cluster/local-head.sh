#!/usr/bin/env bash
# A local Ray head on 127.0.0.1 with token auth: start | stop | status | env (see local_head.py).
# PYTHON defaults to the project's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
exec "$python" "$here/local_head.py" "$@"
