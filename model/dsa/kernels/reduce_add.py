"""Adding a program's float32 tile into a global buffer that many programs add into (dK and dV of
the attention backward, the indexer keys' gradient of the KL kernel): four ways, one default.

``tl.atomic_add`` first moves the dot's accumulator out of the tensor-core layout into a blocked
one through shared memory, then issues one returning ``atom`` per element. On FlashAttention's
backward that conversion was reported to cost much of the kernel (triton-lang/triton#4717: 129
TFLOP/s with atomic_add, 226 with inline ``red`` in the accumulator's layout). The other modes
are the alternatives: ``red`` per element, ``red.v2`` on a thread's neighbouring columns (Hopper's
accumulator keeps columns 2c and 2c+1 of a row in consecutive registers; the pairing is checked on
the addresses inside the instruction sequence, so any layout still adds correctly), and
``red.v4`` after regrouping four columns a thread. Measured on an H100 at 128K (bench_dsa.py
--add-modes), ``tl.atomic_add`` beat the first two: its conversion makes each warp instruction
one contiguous 128-byte row segment, while the accumulator's layout spreads a warp's adds over
eight rows. The quads keep that coalescing with a quarter of the instructions and won the block
backward by 12%; token owners (16 rows a program against 128) stay with atomic_add (DEFAULT below).
tests/gpu/test_dsa_reduce_add.py checks every mode against the reference.

Inline PTX does not run under TRITON_INTERPRET (the CPU suite): there ``mode_for`` always picks
``tl.atomic_add``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

ATOMIC = 0  # tl.atomic_add (Triton's lowering: layout conversion, one atom per element)
RED = 1  # inline red.global.add.f32, one element per instruction, in the accumulator's own layout
RED_PAIRS = 2  # inline red.global.add.v2.f32 on neighbouring columns (Hopper, PTX 8.1+)
RED_QUADS = 3  # regrouped four columns a thread (a layout conversion, as atomic_add's), red.v4.f32

MODES = {"atomic": ATOMIC, "red": RED, "red-pairs": RED_PAIRS, "red-quads": RED_QUADS}
# Per launch kind (attention.config_key; "kl" for the indexer KL kernel). H100, 128K, two runs
# (tests/bench/RESULTS.md, 2026-12-06): block backward 58.2 ms with quads against 66.1 atomic_add,
# 70.2 pairs, 96.1 single red; token backward 506 atomic_add against 532 quads, 704 pairs, 1,319
# single; the KL kernels alike within 1% for atomic_add and quads. Merged token groups: not measured.
DEFAULT = {"block": RED_QUADS, "token": ATOMIC, "merged": ATOMIC, "kl": ATOMIC}

_RED = "red.global.gpu.relaxed.add.f32"
def _pair_asm(masked: bool) -> str:
    """PTX for one pair of elements ($2, $3 addresses; $4, $5 values; $6, $7 masks if ``masked``):
    one red.v2 when the second address follows the first and the first is 8-byte aligned (and
    both are kept), else each kept element alone."""
    keep = ("setp.ne.b32 pa, $6, 0;\nsetp.ne.b32 pb, $7, 0;\n" if masked else "")
    both = ("and.pred pp, pp, pa;\nand.pred pp, pp, pb;\n" if masked else "")
    each = ("and.pred qb, qa, pb;\nand.pred qa, qa, pa;\n" if masked else "mov.pred qb, qa;\n")
    return ("{\n.reg .pred pa, pb, pp, qa, qb;\n.reg .b64 t;\n" + keep
            + "add.s64 t, $2, 4;\nsetp.eq.s64 pp, t, $3;\nand.b64 t, $2, 7;\nsetp.eq.and.s64 pp, t, 0, pp;\n"
            + both + "not.pred qa, pp;\n" + each
            + f"@pp red.global.gpu.relaxed.add.v2.f32 [$2], {{$4, $5}};\n@qa {_RED} [$2], $4;\n"
            + f"@qb {_RED} [$3], $5;\nmov.b32 $0, 0;\nmov.b32 $1, 0;\n}}")


_PAIR_ASM = tl.constexpr(_pair_asm(True))
_PAIR_ASM_ALL = tl.constexpr(_pair_asm(False))
_ONE_ASM_ALL = tl.constexpr(f"{_RED} [$1], $2; mov.b32 $0, 0;")
_ONE_ASM = tl.constexpr(f"""{{
.reg .pred pa;
setp.ne.b32 pa, $3, 0;
@pa {_RED} [$1], $2;
mov.b32 $0, 0;
}}""")


_QUAD_ASM = tl.constexpr("red.global.gpu.relaxed.add.v4.f32 [$1], {$2, $3, $4, $5}; mov.b32 $0, 0;")


@triton.jit
def _quads(x):
    """[R, C] -> four [R, C // 4] tensors: columns 4j, 4j+2, 4j+1, 4j+3."""
    a, b = tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 4, 2, 2)))
    a0, a1 = tl.split(a)
    b0, b1 = tl.split(b)
    return a0, a1, b0, b1


def mode_for(t: torch.Tensor, kind: str, mode: int | str | None = None) -> int:
    """The add mode a launch of ``kind`` (a DEFAULT key) on ``t``'s device takes: ``mode`` (a name
    or number) or the kind's default on a GPU, ATOMIC under the interpreter or off CUDA."""
    if not t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return ATOMIC
    if mode is None:
        return DEFAULT[kind]
    return MODES[mode] if isinstance(mode, str) else int(mode)


@triton.jit
def add_tile(ptrs, vals, mask, MODE: tl.constexpr, MASKED: tl.constexpr = True):
    """ptrs[i] += vals[i] where mask[i] (every i when not ``MASKED``: no mask operands, which would
    otherwise be held in registers per element), float32, with the other programs adding into the
    same buffer at the same time; the order of those adds (and so the last bits of the sums) is not
    fixed."""
    addr = ptrs.to(tl.int64, bitcast=True)
    if MODE == 0:
        if MASKED:
            tl.atomic_add(ptrs, vals, mask=mask, sem="relaxed")
        else:
            tl.atomic_add(ptrs, vals, sem="relaxed")
    elif MODE == 1:
        if MASKED:
            tl.inline_asm_elementwise(_ONE_ASM, "=r,l,f,r", [addr, vals, mask.to(tl.int32)], dtype=tl.int32,
                                      is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise(_ONE_ASM_ALL, "=r,l,f", [addr, vals], dtype=tl.int32, is_pure=False, pack=1)
    elif MODE == 3:
        if MASKED:  # partial tiles: a mask need not be whole over four columns
            tl.atomic_add(ptrs, vals, mask=mask, sem="relaxed")
        else:
            a0, a1, b0, b1 = _quads(vals)  # columns 4j, 4j+2, 4j+1, 4j+3
            p0, _, _, _ = _quads(addr)
            tl.inline_asm_elementwise(_QUAD_ASM, "=r,l,f,f,f,f", [p0, a0, b0, a1, b1], dtype=tl.int32,
                                      is_pure=False, pack=1)
    else:
        if MASKED:
            tl.inline_asm_elementwise(_PAIR_ASM, "=r,=r,l,l,f,f,r,r", [addr, vals, mask.to(tl.int32)],
                                      dtype=tl.int32, is_pure=False, pack=2)
        else:
            tl.inline_asm_elementwise(_PAIR_ASM_ALL, "=r,=r,l,l,f,f", [addr, vals], dtype=tl.int32,
                                      is_pure=False, pack=2)
