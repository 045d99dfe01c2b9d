"""Exact dense attention over packed variable-length segments (no padding, no S x S matrix).

Megatron-core's local attention neither takes packed sequences nor avoids the full score
matrix, so longshot runs its own: the LM's dense core (causal within each document) and the
ViT's attention (bidirectional within each frame group). Consecutive segments of equal length
(the frame groups of one video, equal-length documents) go to the kernel as one batch; a
segment longer than `chunk` queries is cut, on the CPU, into query chunks that each see their
causal key prefix, bounding the math kernel's memory at O(chunk x segment) per head. On a GPU a
segment goes whole to torch's SDPA (flash / cuDNN, O(segment) memory at any length): there a
chunk's causal prefix needs an explicit mask, which the fused kernels cannot skip, so chunks cost
a quarter more attention work and several times the backward time (issue 15's profile: the
backward at 3.1x the forward at 32K). Many short runs go to one FlashAttention varlen call
instead (ONE_CALL_RUNS). GQA is passed through, not expanded.
"""
from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F

from model import flash_varlen

DEFAULT_CHUNK = 8192

# Many short runs (a pack of many clips of different sizes: frame groups whose lengths change
# from clip to clip) go to one FlashAttention varlen call instead of one SDPA call per run. On an
# H100, fwd+bwd of the keye ViT's attention (131,072 patches, 16 heads of 72): 172 runs took
# 158.6 ms through SDPA and 11.3 ms in one call, 2 runs 10.3 ms through SDPA (cuDNN) and 11.3 in
# one call; for long documents cuDNN is the faster kernel (a causal 32K document: 54.7 ms against
# FlashAttention-2's 92.3). Hence: one call only past ONE_CALL_RUNS runs none longer than
# ONE_CALL_MAX_SEGMENT (tests/bench/bench_vit_attention.py, tests/bench/RESULTS.md, 2026-12-06).
ONE_CALL_RUNS = 8
ONE_CALL_MAX_SEGMENT = 4096


def _runs_of_equal_length(cu: list[int]) -> list[tuple[int, int, int]]:
    """(first token, segment length, number of segments) for each run of equal-length segments."""
    runs: list[tuple[int, int, int]] = []
    for a, b in pairwise(cu):
        n = b - a
        if n == 0:
            continue
        if runs and runs[-1][1] == n and runs[-1][0] + runs[-1][1] * runs[-1][2] == a:
            start, length, count = runs[-1]
            runs[-1] = (start, length, count + 1)
        else:
            runs.append((a, n, 1))
    return runs


def _sdpa(q, k, v, scale, causal, mask=None):
    """q [B, L, Hq, D], k/v [B, M, Hkv, D] -> [B, L, Hq, D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=causal and mask is None, scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     causal: bool, softmax_scale: float | None = None,
                     chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """softmax(q k^T * scale) v within each segment of `cu_seqlens`, causal or not.

    q [T, Hq, D], k and v [T, Hkv, D] with Hq a multiple of Hkv; returns [T, Hq, D].
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    cu = [int(x) for x in cu_seqlens.tolist()]
    if cu[0] != 0 or cu[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens must run from 0 to T={q.shape[0]}, got {cu[0]}..{cu[-1]}")
    runs = _runs_of_equal_length(cu)
    longest = max((n for _, n, _ in runs), default=0)
    if q.is_cuda and len(runs) > ONE_CALL_RUNS and longest <= ONE_CALL_MAX_SEGMENT and flash_varlen.available(q, k):
        cu32 = cu_seqlens.to(device=q.device, dtype=torch.int32)
        return flash_varlen.flash_varlen(q, k, v, flash_varlen.VarlenLayout(cu32, cu32, longest, longest),
                                         causal, scale)[0]
    outs = []
    for start, length, count in runs:
        end = start + length * count
        if length <= chunk or q.is_cuda:
            shape = (count, length)
            outs.append(_sdpa(q[start:end].unflatten(0, shape), k[start:end].unflatten(0, shape),
                              v[start:end].unflatten(0, shape), scale, causal).flatten(0, 1))
            continue
        for s in range(start, end, length):
            outs.append(_long_segment(q[s:s + length], k[s:s + length], v[s:s + length],
                                      scale, causal, chunk))
    return torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)


def _long_segment(q, k, v, scale, causal, chunk):
    """One segment in query chunks; each chunk sees its causal prefix (or all keys)."""
    n = q.shape[0]
    pieces = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        kend = b if causal else n
        mask = None
        if causal:
            rows = torch.arange(a, b, device=q.device)[:, None]
            mask = torch.arange(kend, device=q.device)[None, :] <= rows
        pieces.append(_sdpa(q[None, a:b], k[None, :kend], v[None, :kend], scale, causal, mask)[0])
    return torch.cat(pieces, dim=0)


def packed_attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                          q_doc: torch.Tensor, softmax_scale: float | None = None,
                          chunk: int = DEFAULT_CHUNK, host_pos=None) -> torch.Tensor:
    """Causal attention of query rows at global positions against the whole pack's keys.

    The context-parallel form of the LM's dense core: a rank holds some query rows q [Tq, Hq, D]
    (sorted global positions `q_pos`, their documents' first positions `q_doc`) and the
    gathered key table k, v [T, Hkv, D] (row = global position); row i sees keys
    q_doc[i] .. q_pos[i]. Rows are taken in runs of consecutive positions of one document: on a
    GPU each run in one fused call (lower-right causal), on the CPU in query chunks against
    their causal key prefix with an explicit mask.
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    # host_pos: the same positions already on the host (no wait for the GPU in every layer)
    pos, doc = (t.tolist() for t in (host_pos if host_pos is not None else (q_pos, q_doc)))
    outs, start = [], 0
    for i in range(1, len(pos) + 1):
        if i < len(pos) and pos[i] == pos[i - 1] + 1 and doc[i] == doc[i - 1]:
            continue
        d0 = doc[start]
        if q.is_cuda:  # the whole run at once: its last query sees its last key (lower right)
            outs.append(_lower_right(q[start:i], k[d0:pos[i - 1] + 1], v[d0:pos[i - 1] + 1], scale))
            start = i
            continue
        for a in range(start, i, chunk):
            b = min(i, a + chunk)
            kend = pos[b - 1] + 1
            rows = q_pos[a:b].to(torch.int64)[:, None]
            mask = torch.arange(d0, kend, device=q.device)[None, :] <= rows
            outs.append(_sdpa(q[None, a:b], k[None, d0:kend], v[None, d0:kend], scale, True, mask)[0])
        start = i
    return torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)


def _lower_right(q, k, v, scale):
    """Causal attention of the last len(q) positions of k's span: q [L, Hq, D] against k, v
    [M >= L, Hkv, D], with no mask in memory. A run starting at its document's start is the usual
    causal square; otherwise torch's lower-right CausalBias, whose fused path takes equal heads,
    so GQA's keys are repeated for it (M x Hq x D, freed after the call)."""
    from torch.nn.attention.bias import causal_lower_right

    if q.shape[0] == k.shape[0]:
        return _sdpa(q[None], k[None], v[None], scale, True)[0]
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    bias = causal_lower_right(q.shape[0], k.shape[0])
    out = F.scaled_dot_product_attention(q[None].transpose(1, 2), k[None].transpose(1, 2),
                                         v[None].transpose(1, 2), attn_mask=bias, scale=scale)
    return out.transpose(1, 2)[0]
