"""Timing a GPU call the way the kernel benches report it: the median of CUDA-event timings after
one warm-up call, with enough repetitions to be stable and few enough for multi-second calls; and
the table they report it in."""
from __future__ import annotations

import os
import statistics
import time

import torch


def timeit(fn, min_total: float = 0.6, max_reps: int = 10) -> float:
    """Median seconds of fn() over CUDA events after one warm-up call: at least two timed calls,
    then more until `min_total` seconds have passed or `max_reps` calls (a call over 2 s stops it)."""
    fn()
    torch.cuda.synchronize()
    ts = []
    t_start = time.time()
    while len(ts) < max_reps and (len(ts) < 2 or time.time() - t_start < min_total):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
        if ts[-1] > 2.0 and len(ts) >= 2:
            break
    return statistics.median(ts)


def print_and_save(lines: list[str], out_dir: str, name: str) -> str:
    """A bench's markdown table: printed whole (the device call's output keeps its tail) and
    written to out_dir/name, which the call brings back."""
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name), "w") as f:
        f.write(table + "\n")
    return table
