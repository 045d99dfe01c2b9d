"""The VLM's own pieces against plain definitions: packed attention, rotary, patch geometry."""
import math

import torch

from model.packed_attention import _lower_right, _sdpa, packed_attention
from model.rope import apply_rotary, multi_axis_cos_sin
from model.vision_geometry import frame_group_cu_seqlens, patch_rows_cols


def naive_attention(q, k, v, cu, causal):
    """Full T x T scores with a block-diagonal (and causal) mask, GQA by repetition."""
    t, hq, d = q.shape
    k = k.repeat_interleave(hq // k.shape[1], dim=1)
    v = v.repeat_interleave(hq // v.shape[1], dim=1)
    doc = torch.searchsorted(cu[1:].long(), torch.arange(t), right=True)
    allowed = doc[:, None] == doc[None, :]
    if causal:
        allowed &= torch.arange(t)[None, :] <= torch.arange(t)[:, None]
    s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    p = s.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", p, v)


def test_packed_attention_is_exact_for_any_chunking():
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 5 + 23, 28 + 5, 33 + 5, 38 + 17], dtype=torch.int32)  # equal runs, long docs
    t = int(cu[-1])
    q = torch.randn(t, 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(t, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(t, 2, 8, dtype=torch.float64, requires_grad=True)
    for causal in (True, False):
        want = naive_attention(q, k, v, cu, causal)
        g_want = torch.autograd.grad(want.square().sum(), (q, k, v))
        for chunk in (4, 7, 1000):
            got = packed_attention(q, k, v, cu, causal=causal, chunk=chunk)
            torch.testing.assert_close(got, want)
            for a, b in zip(torch.autograd.grad(got.square().sum(), (q, k, v)), g_want):
                torch.testing.assert_close(a, b)


def test_lower_right_runs_equal_the_masked_prefix():
    """The GPU's mask-free form of a context-parallel run (queries that end a key span, GQA keys)
    gives what the explicit causal mask gives, forward and gradients (on the CPU torch
    materialises the lower-right bias, an independent path from ours)."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(50, 8, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(120, 2, 16, generator=g, requires_grad=True) for _ in range(2))
    got = _lower_right(q, k, v, 0.25)
    mask = torch.arange(120)[None] <= torch.arange(70, 120)[:, None]
    want = _sdpa(q[None], k[None], v[None], 0.25, True, mask)[0]
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.square().sum(), (q, k, v)),
                    torch.autograd.grad(want.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b)


def test_documents_do_not_see_each_other():
    torch.manual_seed(1)
    cu = torch.tensor([0, 6, 15], dtype=torch.int32)
    q, k, v = (torch.randn(15, 2, 4) for _ in range(3))
    base = packed_attention(q, k, v, cu, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[6:], v2[6:] = torch.randn(9, 2, 4), torch.randn(9, 2, 4)
    torch.testing.assert_close(packed_attention(q, k2, v2, cu, causal=True)[:6], base[:6])
    # causal: changing a later key of the same document does not change earlier outputs
    k3 = k.clone()
    k3[10] += 1.0
    out = packed_attention(q, k3, v, cu, causal=True)
    torch.testing.assert_close(out[:10], base[:10])
    assert not torch.allclose(out[10:], base[10:])


def test_rotary_is_relative_and_reduces_to_1d_rope():
    torch.manual_seed(2)
    d, sections = 16, (2, 3, 3)
    pos = torch.tensor([[3, 10, 4], [5, 1, 7], [0, 9, 2]])  # (t, h, w) of three tokens
    q, k = torch.randn(1, 1, d), torch.randn(1, 1, d)

    def score(pq, pk):
        cos, sin = multi_axis_cos_sin(torch.stack([pq, pk], dim=1), sections, d, 10000.0)
        qa = apply_rotary(q, cos[:1], sin[:1])
        ka = apply_rotary(k, cos[1:], sin[1:])
        return float((qa * ka).sum())

    shift = torch.tensor([7, -2, 4])
    a, b = pos[:, 0], pos[:, 1]
    assert abs(score(a, b) - score(a + shift, b + shift)) < 1e-4
    assert abs(score(a, b) - score(a, b + torch.tensor([1, 0, 0]))) > 1e-4
    # equal positions on all axes = ordinary RoPE
    p = torch.arange(5)
    cos3, sin3 = multi_axis_cos_sin(p.expand(3, 5), sections, d, 10000.0)
    cos1, sin1 = multi_axis_cos_sin(p[None], (8,), d, 10000.0)
    torch.testing.assert_close(cos3, cos1)
    torch.testing.assert_close(sin3, sin1)


def test_patch_geometry_follows_the_loader_order():
    grid = torch.tensor([[2, 4, 6], [1, 2, 2]], dtype=torch.int32)
    rc = patch_rows_cols(grid, merge=2)
    assert rc.shape == (2, 2 * 24 + 4)
    # first merged token of video 0: the 2x2 block at rows 0-1, cols 0-1, as (di, dj) row-major
    assert rc[:, :4].tolist() == [[0, 0, 1, 1], [0, 1, 0, 1]]
    # the next merged token is one merged column to the right
    assert rc[:, 4:8].tolist() == [[0, 0, 1, 1], [2, 3, 2, 3]]
    # every frame group covers every (row, col) once
    g0 = set(map(tuple, rc[:, :24].t().tolist()))
    assert g0 == {(r, c) for r in range(4) for c in range(6)}
    assert frame_group_cu_seqlens(grid).tolist() == [0, 24, 48, 52]
