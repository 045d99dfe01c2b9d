"""The packed attention of the ViT and of the LM's dense core, two ways, on one GPU:

    python tests/bench/bench_vit_attention.py [--patches 131072] [--lm-tokens 32768]

- ``packed_attention`` (model/packed_attention.py, what runs today): one torch SDPA call (cuDNN's
  fused kernel on Hopper) per run of equal-length segments, each run's output transposed back
  and the runs concatenated;
- ``flash_varlen`` (model/flash_varlen.py): FlashAttention-2's variable-length kernel, the whole
  pack in one launch, no concatenation.

Shapes: the keye-30b-a3b ViT (16 heads of 72) over frame groups of three videos of different
sizes (336x588, 252x448, 448x252 frames: 1008, 576 and 576 patches a group), bidirectional, each
video's groups together and, the worst case, in turn; the
LM (32 query and 4 KV heads of 128) over one causal document. Forward+backward, bf16, median of
CUDA-event timings (tests/bench/cuda_timing.py). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model.flash_varlen import VarlenLayout, available, flash_varlen  # noqa: E402
from model.packed_attention import packed_attention  # noqa: E402
from tests.bench.cuda_timing import timeit  # noqa: E402


def frame_groups(total: int, interleaved: bool) -> list[int]:
    """Segment lengths: three videos' frame groups until `total` patches, each video's groups
    together (a pack: one SDPA call per video) or the videos' groups in turn (the worst case for
    packed_attention: one call per group, as in packs of many clips of different sizes)."""
    sizes, lengths = (1008, 576, 576), []
    while sum(lengths) + 1008 <= total:
        lengths += [sizes[len(lengths) % 3]]
    return lengths if interleaved else sorted(lengths, reverse=True)


def case(name, lengths, hq, hkv, d, causal):
    t = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(t, hq, d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(t, hkv, d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(t, hkv, d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(t, hq, d, device="cuda", generator=g, dtype=torch.bfloat16)
    lay = VarlenLayout(cu, cu, max(lengths), max(lengths))
    flops = 4 * hq * d * sum(n * (n + 1) // 2 if causal else n * n for n in lengths) * 3.5  # fwd + bwd
    ways = {"packed_attention (SDPA per run + cat)": lambda: packed_attention(q, k, v, cu, causal),
            "flash_varlen (one call)": lambda: flash_varlen(q, k, v, lay, causal, d ** -0.5)[0]}
    want = None
    rows = []
    for way, fwd in ways.items():
        if way.startswith("flash") and not available(q, k):
            rows.append(f"| {name} | {way} | unavailable | | |")
            continue
        out = fwd()
        err = 0.0 if want is None else float((out.float() - want).norm() / want.norm())
        want = out.float() if want is None else want
        sec = timeit(lambda fwd=fwd: torch.autograd.backward(fwd(), dy))
        rows.append(f"| {name} | {way} | {sec * 1e3:.2f} | {flops / sec / 1e12:.0f} | {err:.1e} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patches", type=int, default=131072)
    ap.add_argument("--lm-tokens", type=int, default=32768)
    a = ap.parse_args(argv)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| shape | attention | fwd+bwd ms | TFLOP/s | rel. diff to the first |")
    print("|---|---|---|---|---|")
    for interleaved in (False, True):
        what = "groups of 3 videos in turn" if interleaved else "3 videos' groups, video by video"
        for line in case(f"ViT, {a.patches:,} patches, 16x72, {what}", frame_groups(a.patches, interleaved),
                         16, 16, 72, False):
            print(line)
    for line in case(f"LM, one {a.lm_tokens:,}-token document, 32/4x128, causal", [a.lm_tokens], 32, 4, 128, True):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
