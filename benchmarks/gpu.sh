#!/usr/bin/env bash
# GPU benchmark (issue 6): inference records/s at batch sizes 256..65,536 in fp32 and bf16 and
# training samples/s on the GPU, against the CPU figures of the same script; writes
# benchmarks/results/gpu.json naming the GPU. Under 5 minutes on one GPU; downloads nothing.
#
#   benchmarks/gpu.sh                      # on a machine with CUDA
#   benchmarks/gpu.sh --device cpu --quick # smoke run without a GPU (seconds; tests use it)
#   benchmarks/gpu.sh --no-cpu             # GPU figures only
# Then: .venv/bin/python -m benchmarks.report
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ "${1:-}" != "--device" ] && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout "${GPU_BENCH_TIMEOUT:-290}" "$PY" -m benchmarks.bench_gpu "$@"
