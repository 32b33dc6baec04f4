#!/usr/bin/env bash
# bash benchmarks/gpu/run.sh [--wheel-dir DIR] [run.py options...]   (see README.md here)
# If diffusers is not importable, installs the wheels in DIR (diffusers-*.whl required) with pip --no-deps, offline.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$(cd "$HERE/../.." && pwd)"; PY="${PYTHON:-python3}"
if [ "${1:-}" = "--wheel-dir" ]; then WHEELS="$2"; shift 2; fi
if [ -n "${WHEELS:-}" ] && ! "$PY" -c "import diffusers" >/dev/null 2>&1; then
  ls "$WHEELS"/diffusers-*.whl >/dev/null 2>&1 || { echo "run.sh: no diffusers-*.whl in $WHEELS" >&2; exit 2; }
  # a read-only or externally managed site-packages: unpack the wheels onto PYTHONPATH instead
  "$PY" -m pip install --no-deps --no-index -q "$WHEELS"/*.whl || { SITE="$(mktemp -d)";
    for W in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$W" "$SITE"; done
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; echo "run.sh: pip failed; wheels unpacked in $SITE" >&2; }
fi
cd "$ROOT" && exec "$PY" "$HERE/run.py" "$@"
