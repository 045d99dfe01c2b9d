#!/usr/bin/env bash
# Several arms of tests/bench/bench_dsa_continuation.py in one device call, from one pre-training
# (8K packs, 4 layers: the issue-16 setting of RESULTS.md, 2026-12-07). Each argument is one arm's
# extra flags; the runs live in $CONT (default /tmp/cont) and resume there, so a second call on
# the same warm machine finishes what the first one left. Stops at $BUDGET seconds.
#
#   EXTRA="BUDGET=555 bash tests/bench/continuation_arms.sh '--topk 1024 --dense-layers 0' \
#       '--topk 256 --dense-layers 0 --warmup 200'" bash tests/bench/gpu_suite.sh 0
set -uo pipefail
CONT="${CONT:-/tmp/cont}"; OUT="${OUT:-/tmp/cont_out}"; mkdir -p "$OUT"
arm() {
  # shellcheck disable=SC2086  # an arm's flags are split on purpose
  python3 tests/bench/bench_dsa_continuation.py --out "$CONT" --seq-len 8192 --layers 4 --pretrain 1000 \
    --lr 1e-3 --continue-lr 1e-4 --warmup 25 --warmup-lr 1e-3 --sparse 300 --topk 256 --block-rules max \
    --recall-topk 256,1024 $1 && cp "$CONT/results.md" "$OUT/results_$(echo "$1" | tr -c 'A-Za-z0-9\n' _ | tr -s _).md"
}
export -f arm; export CONT OUT
timeout "${BUDGET:-555}" bash -c 'for a in "$@"; do arm "$a" || exit 1; done' _ "$@"
echo "arms exit $?"
for f in "$CONT"/*/recall_at_switch.md; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").md"; done
ls "$CONT"
