#!/usr/bin/env bash
# One device call (the run tool, carry [".cache/encdeps/core.tar.xz", ...]) that unpacks the packages
# the lent GPU machines lack, runs the GPU test suite (tests/gpu, or the tests named in $GPU_TESTS)
# and then, in the time the call has left, the benchmark rows given as arguments. What it prints,
# and the GPU tests' worker logs, land in $OUT.
#
#   [GPU_TESTS="tests/gpu/..."] [EXTRA="python3 tests/bench/bench_rope.py; ..."] \
#   bash tests/bench/gpu_suite.sh [SUITE_SECONDS] [-- BENCH_PARALLEL_ARGS...]
#
# SUITE_SECONDS 0 skips the tests; EXTRA runs last (its output in $OUT/extra.txt).
set -uo pipefail
SUITE_S="${1:-420}"; shift || true
[ "${1:-}" = "--" ] && shift
OUT="${OUT:-/tmp/gpu_suite_out}"; mkdir -p "$OUT/logs"
# every archive the call carried (core, and titan/ray/hfdeps/gpudecode when named in carry)
python3 -c "import glob,tarfile; [tarfile.open(f).extractall('/tmp/site', filter='tar') for f in glob.glob('.cache/encdeps/*.tar.xz') + glob.glob('.cache/hfdeps/*.tar.xz')]"
export PYTHONPATH=/tmp/site:$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export GPU_TEST_LOGS="$OUT/logs" GPU_LAYOUT_TIMEOUT=$((SUITE_S - 40))
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
# shellcheck disable=SC2086
if [ "$SUITE_S" -gt 0 ]; then
  python3 -m pytest ${GPU_TESTS:-tests/gpu} -v -rA --durations=0 -p no:cacheprovider --timeout "$SUITE_S" \
    > "$OUT/pytest_gpu.txt" 2>&1
  echo "pytest exit $?"; pkill -9 -f tests.gpu.layout_worker; grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/pytest_gpu.txt" | tail -15
fi
if [ "$#" -gt 0 ]; then
  python3 tests/bench/bench_parallel.py --out /tmp/bp "$@" > "$OUT/bench_parallel.txt" 2>&1
  echo "bench_parallel exit $?"; grep -E "^\|" "$OUT/bench_parallel.txt" | tail -12
  tar -C /tmp -cf "$OUT/bench_parallel_out.tar" bp 2>/dev/null
fi
if [ -n "${EXTRA:-}" ]; then
  bash -c "$EXTRA" > "$OUT/extra.txt" 2>&1
  echo "extra exit $?"; grep -E "^\||x$|s, Triton|by rows" "$OUT/extra.txt" | tail -30
fi
