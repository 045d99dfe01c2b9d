"""Rotary embedding: the Triton pass against the PyTorch rotation, at the shapes one LM layer of
a preset rotates per step (attention q and k, indexer q and k), forward and backward.

    python tests/bench/bench_rope.py [--seq-len 262144] [--preset small]

Prints a table: ms per layer for each tensor and in total, GB/s moved by the kernel (one read and
one write of the tensor in bf16), and the projected share of a training step (forward,
recomputed forward and backward of every layer).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _time(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    from model.presets import preset
    from model.rope import multi_axis_cos_sin, rotary_reference
    from model.rope_kernel import rotary_kernel

    p = argparse.ArgumentParser()
    p.add_argument("--seq-len", type=int, default=262_144)
    p.add_argument("--preset", default="small")
    a = p.parse_args()
    lm = preset(a.preset).lm
    t, d = a.seq_len, lm.head_dim
    pos = torch.arange(t, device="cuda")[None].repeat(3, 1)
    cos, sin = multi_axis_cos_sin(pos, lm.mrope_section, d, lm.rope_theta)
    shapes = {"q": lm.heads, "k": lm.kv_heads, "indexer q": lm.dsa.index_heads, "indexer k": 1}
    print(f"| {torch.cuda.get_device_name()} | {a.preset} | {t:,} tokens | ms per layer, forward + backward |")
    print("| tensor | heads | PyTorch ms | Triton ms | speed-up | Triton GB/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    tot_ref = tot_ker = 0.0
    for name, h in shapes.items():
        x = torch.randn(t, h, lm.dsa.index_dim if name.startswith("indexer") else d, device="cuda",
                        dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn_like(x)
        ms = []
        for fn in (rotary_reference, rotary_kernel):
            ms.append(_time(lambda: torch.autograd.grad(fn(x, cos, sin), x, grad)))
        gbs = 2 * 2 * x.numel() * x.element_size() / (ms[1] / 1e3) / 1e9  # read + write, forward and backward
        tot_ref, tot_ker = tot_ref + ms[0], tot_ker + ms[1]
        print(f"| {name} | {h} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[0] / ms[1]:.1f}x | {gbs:,.0f} |")
    # a step: forward, recomputed forward (one more forward) and backward of every layer
    per_step = lambda ms: ms * lm.layers * 1.5 / 1e3  # noqa: E731  (fwd+bwd measured; + one forward ~ half)
    print(f"| all, per layer | | {tot_ref:.2f} | {tot_ker:.2f} | {tot_ref / tot_ker:.1f}x | |")
    # rows per program (model/rope_kernel.py BLOCK_T): q, the largest tensor, at each
    import model.rope_kernel as rk

    default, sweep = rk.BLOCK_T, []
    x = torch.randn(t, lm.heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    for rows in (8, 16, 32, 64):
        rk.BLOCK_T = rows
        sweep.append(f"{rows}: {_time(lambda: torch.autograd.grad(rotary_kernel(x, cos, sin), x, grad)):.2f} ms")
    rk.BLOCK_T = default
    print(f"\nq fwd+bwd by rows per program (default {default}): " + ", ".join(sweep))
    print(f"\nper training step ({lm.layers} layers, recomputation): PyTorch ~{per_step(tot_ref):.2f} s, "
          f"Triton ~{per_step(tot_ker):.2f} s")


if __name__ == "__main__":
    main()
