#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every stage on CPU and GPU, compared.
# Usage: benchmarks/gpu_check.sh OUT [--legs=cpu,gpu,gpu_mixed] [--num_clips=160]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
