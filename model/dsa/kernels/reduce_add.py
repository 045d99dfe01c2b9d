"""Adding a program's float32 tile into a global buffer that many programs add into (dK and dV of
the attention backward, the indexer keys' gradient of the KL kernel): two ways, a default per
launch kind.

``tl.atomic_add`` moves the dot's accumulator out of the tensor-core layout into a blocked one
(through shared memory), so that each warp instruction adds one contiguous 128-byte row segment,
then issues one scalar ``atom`` per element. ``quads`` makes the same kind of conversion but to
four neighbouring columns a thread and adds them with one ``red.global.add.v4.f32`` (Hopper, PTX
8.1+): a quarter of the instructions, fire-and-forget, the same coalescing.

Measured on an H100 at 128K (bench_dsa.py --add-modes, tests/bench/RESULTS.md, 2026-12-06), with
two more modes since removed (their code is at commit 4c59581): adding in the accumulator's own
layout, the fix reported for FlashAttention's backward (triton-lang/triton#4717), lost here, one
``red`` per element at 96.1 ms and ``red.v2`` on a thread's neighbouring columns at 70.2, because
a warp's adds then span eight rows; ``tl.atomic_add`` took 66.1 ms and the quads 58.2 (block
backward). Token owners (16 rows a program against 128) were 5% slower with quads, and the KL
kernels the same within 1%. tests/gpu/test_dsa_reduce_add.py checks both modes against the
reference.

Inline PTX does not run under TRITON_INTERPRET (the CPU suite): there ``mode_for`` always picks
``tl.atomic_add``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

ATOMIC = 0  # tl.atomic_add (Triton's lowering: layout conversion, one atom per element)
QUADS = 1  # four columns a thread after a layout conversion, one red.global.add.v4.f32 each

MODES = {"atomic": ATOMIC, "quads": QUADS}
# Per launch kind (attention.config_key; "kl" for the indexer KL kernel, "target" for its head-mean
# target's kernel), from the measurements above; merged token groups were not measured and keep
# atomic_add. The quads need values whose layout holds each element once: a dot's accumulator
# does, a tl.sum over an axis does not (several threads then hold the same sum, and the inline
# add runs once per copy, where tl.atomic_add masks the copies): the target's head sums gave
# gradients 60% off with quads (H100, tests/gpu/test_dsa_reduce_add.py, 2026-12-07).
DEFAULT = {"block": QUADS, "token": ATOMIC, "merged": ATOMIC, "kl": ATOMIC, "target": ATOMIC}

_QUAD_ASM = tl.constexpr("red.global.gpu.relaxed.add.v4.f32 [$1], {$2, $3, $4, $5}; mov.b32 $0, 0;")


def mode_for(t: torch.Tensor, kind: str, mode: int | str | None = None) -> int:
    """The add mode a launch of ``kind`` (a DEFAULT key) on ``t``'s device takes: ``mode`` (a name
    or number) or the kind's default on a GPU, ATOMIC under the interpreter or off CUDA."""
    if not t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return ATOMIC
    if mode is None:
        return DEFAULT[kind]
    return MODES[mode] if isinstance(mode, str) else int(mode)


@triton.jit
def _quads(x):
    """[R, C] -> four [R, C // 4] tensors: columns 4j, 4j+2, 4j+1, 4j+3."""
    a, b = tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 4, 2, 2)))
    a0, a1 = tl.split(a)
    b0, b1 = tl.split(b)
    return a0, a1, b0, b1


@triton.jit
def add_tile(ptrs, vals, mask, MODE: tl.constexpr, MASKED: tl.constexpr = True):
    """ptrs[i] += vals[i] where mask[i] (every i when not ``MASKED``), float32, with the other
    programs adding into the same buffer at the same time; the order of those adds (and so the
    last bits of the sums) is not fixed. Quads need whole groups of four columns, so masked
    tiles (a partial list tile, the causal range) always take tl.atomic_add."""
    if MODE == 1 and not MASKED:
        a0, a1, b0, b1 = _quads(vals)  # columns 4j, 4j+2, 4j+1, 4j+3
        p0, _, _, _ = _quads(ptrs.to(tl.int64, bitcast=True))
        tl.inline_asm_elementwise(_QUAD_ASM, "=r,l,f,f,f,f", [p0, a0, b0, a1, b1], dtype=tl.int32,
                                  is_pure=False, pack=1)
    elif MASKED:
        tl.atomic_add(ptrs, vals, mask=mask, sem="relaxed")
    else:
        tl.atomic_add(ptrs, vals, sem="relaxed")
