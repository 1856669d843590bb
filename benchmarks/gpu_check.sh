#!/usr/bin/env bash
# The device call for benchmarks/gpu_check.py, on a lent GPU machine (torch and
# transformers there; hydra-core, omegaconf and antlr4 travel as wheels in .whl,
# fetched here first with `bash benchmarks/gpu_wheels.sh`). Run with the device
# tool: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 benchmarks/gpu_check.py --out "${OUT:-.}" --quiet "$@" 2>&1 | tee "${OUT:-.}/gpu_check.log"
