#!/usr/bin/env bash
# One device call (the run tool, carry [".cache/encdeps/core.tar.xz"]) that unpacks the packages
# the lent GPU machines lack, runs the GPU test suite (tests/gpu) and then, in the time the call
# has left, the benchmark rows given as arguments. Everything it prints lands in $OUT.
#
#   bash tests/bench/gpu_suite.sh [SUITE_SECONDS] [-- BENCH_PARALLEL_ARGS...]
set -uo pipefail
SUITE_S="${1:-420}"; shift || true
[ "${1:-}" = "--" ] && shift
OUT="${OUT:-/tmp/gpu_suite_out}"; mkdir -p "$OUT"
python3 -c "import glob,tarfile; [tarfile.open(f).extractall('/tmp/site', filter='tar') for f in glob.glob('.cache/encdeps/core.tar.xz') + glob.glob('.cache/hfdeps/*.tar.xz')]"
export PYTHONPATH=/tmp/site:$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
timeout "$SUITE_S" python3 -m pytest tests/gpu -v -rA --durations=0 -p no:cacheprovider 2>&1 | tail -c 200000 > "$OUT/pytest_gpu.txt"
echo "pytest tests/gpu exit ${PIPESTATUS[0]}"; grep -E "passed|failed|error" "$OUT/pytest_gpu.txt" | tail -15
if [ "$#" -gt 0 ]; then
  python3 tests/bench/bench_parallel.py --out /tmp/bp "$@" 2>&1 | tail -c 100000 > "$OUT/bench_parallel.txt"
  echo "bench_parallel exit ${PIPESTATUS[0]}"; tail -30 "$OUT/bench_parallel.txt"
  tar -C /tmp -cf "$OUT/bench_parallel_out.tar" bp 2>/dev/null
fi
