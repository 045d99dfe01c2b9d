"""One profiled call, as the table of its top kernels by GPU time: what a benchmark row prints when
asked where its time goes."""
from __future__ import annotations

import torch


def profile_table(run, rows: int = 40) -> str:
    """Runs `run()` once under torch.profiler (CPU and CUDA activity) and returns the operators and
    kernels sorted by total CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)
