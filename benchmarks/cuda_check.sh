#!/usr/bin/env bash
# The prepared device check (benchmarks/cuda_check.py): environment, `pytest -m cuda`, `stablenas bench`
# on the device, `bench --tune`, a 1-epoch darts search; at most 8 minutes on one H100.
# Usage: benchmarks/cuda_check.sh OUT_DIR   (PYTHON=... picks the interpreter; default: .venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
python="${PYTHON:-$here/../.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
exec "$python" "$here/cuda_check.py" --out "$1"
