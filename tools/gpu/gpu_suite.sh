#!/usr/bin/env bash
# The whole GPU check in one command, for a lent GPU machine (see README, "GPU machine"):
#   here:   bash tools/gpu/fetch-wheels.sh            # once; fills the git-ignored .gpu-wheels/
#   there:  bash tools/gpu/gpu_suite.sh               # with .gpu-wheels carried along
# Installs PyCUDA and npool (tools/gpu/device-setup.sh), runs the whole test suite and the GPU
# benchmark, and leaves their output in $OUT (or ./gpu-results) as gpu_tests.txt and
# bench_gpu.txt, to be committed under benchmarks/results/.
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bash tools/gpu/device-setup.sh 2>&1 | tee "$out/setup.txt" || exit 1
{
  echo "# npool test suite on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  echo "# $(date -u +%Y-%m-%dT%H:%MZ), HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}"
  python3 -m pytest tests -q -rs -p no:cacheprovider 2>&1
} | tee "$out/gpu_tests.txt"
python3 benchmarks/bench_gpu.py --out "$out/bench_gpu.txt" 2>&1 | tail -n 60
