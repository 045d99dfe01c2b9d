"""The selection seen from the keys: which owners attend each tile of ``bn`` consecutive keys.

The query-order backward (kernels/attention.py) gives each owner's program the owner's dK, dV, and
adds them into float32 buffers with atomics, because a key is selected by many owners. The
key-order backward (kernels/attention_dkdv.py) turns this around: one program per key tile and KV
head sums dK, dV over the owners that attend any key of the tile, in registers, and writes them
once. That needs this transpose of the selection:

- pairs (tile, owner), sorted by tile then owner, one per owner that attends a key of the tile
  (from its selected list or its contiguous range), each with a bit mask of the tile's keys in the
  owner's key set (bit i = key tile * bn + i). The causal mask of the range is the kernel's job;
- chunks of at most ``max_pairs`` pairs of one tile, one program each, so that a tile attended by
  every later block (the first frames of a video, an attention sink) does not become the one
  program all others wait for. A tile split over several chunks has its chunks' partial sums
  written to a float32 scratch slot each and added in a fixed order by a second pass: the sums
  are deterministic, unlike the atomics';
- ``density``: the attended (query, key) pairs over those the tiles compute. The kernel computes
  whole tiles, so a selection of keys scattered one per tile costs up to ``bn`` times its work
  there; the launcher keeps the query order when the density is low.

Selected lists and ranges must be disjoint for an owner (they are: lists hold keys before the
owner's block, plan.py) and a list must not repeat a key (selection is a top-k): the bits of a pair
are summed, which is their OR only then.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeyTiles:
    """Pairs and chunks as int32/int64 tensors on the plan's device (see the module docstring)."""

    bn: int
    n_tiles: int
    pair_owner: torch.Tensor  # [n_pairs] int32, sorted by (tile, owner)
    pair_bits: torch.Tensor  # [n_pairs] int64, the tile's keys in the owner's set
    chunk_tile: torch.Tensor  # [n_chunks] int32
    chunk_lo: torch.Tensor  # [n_chunks] int32: the chunk's pairs are [chunk_lo, chunk_hi)
    chunk_hi: torch.Tensor
    chunk_slot: torch.Tensor  # [n_chunks] int32: scratch slot of a chunk of a split tile, else -1
    split_tile: torch.Tensor  # [n_split] int32: tiles of more than one chunk
    split_lo: torch.Tensor  # [n_split] int32: their slots are [split_lo, split_hi)
    split_hi: torch.Tensor
    density: float

    @property
    def n_chunks(self) -> int:
        return int(self.chunk_tile.numel())

    @property
    def n_slots(self) -> int:
        return int(self.split_hi[-1]) if self.split_hi.numel() else 0


def _list_bits(sel, sel_n, n_own: int, bn: int):
    """(pair keys tile * n_own + owner, bits) of every selected key, one entry per key."""
    k = sel.shape[1]
    valid = torch.arange(k, device=sel.device)[None, :] < sel_n[:, None].long()
    key = sel.long()[valid]
    owner = torch.arange(n_own, device=sel.device)[:, None].expand(n_own, k)[valid]
    return (key // bn) * n_own + owner, torch.ones_like(key) << (key % bn)


def _range_bits(plan, bn: int):
    """(pair keys, bits) of every tile that an owner's contiguous range [rng_lo, rng_hi) touches."""
    lo, hi = plan.rng_lo.long(), plan.rng_hi.long()
    n_own = lo.numel()
    t0 = lo // bn
    cnt = torch.where(hi > lo, (hi - 1) // bn - t0 + 1, 0)
    owner = torch.repeat_interleave(torch.arange(n_own, device=lo.device), cnt)
    first = torch.cumsum(cnt, 0) - cnt
    tile = t0[owner] + torch.arange(owner.numel(), device=lo.device) - first[owner]
    a = torch.maximum(lo[owner], tile * bn) - tile * bn  # the run of keys [a, b) within the tile
    b = torch.minimum(hi[owner], tile * bn + bn) - tile * bn
    n = b - a
    ones = torch.where(n >= 64, -1, (torch.ones_like(n) << n.clamp(max=63)) - 1)
    return tile * n_own + owner, ones << a


def key_tiles(plan, sel, sel_n, n_keys: int, bn: int = 64, max_pairs: int = 32) -> KeyTiles:
    """The transpose of ``plan``'s owners' key sets (list ``sel``/``sel_n`` or None, and ranges)."""
    if not 16 <= bn <= 64:
        raise ValueError(f"key tiles hold 16 to 64 keys (one int64 bit mask), got {bn}")
    dev = plan.own_q0.device
    n_own = plan.n_owners
    n_tiles = -(-n_keys // bn)
    keys, bits = _range_bits(plan, bn)
    attended = (plan.rng_hi.long() - plan.rng_lo.long()) * plan.own_nq.long()
    if sel is not None:
        lk, lb = _list_bits(sel, sel_n, n_own, bn)
        keys, bits = torch.cat([keys, lk]), torch.cat([bits, lb])
        attended = attended + sel_n.long() * plan.own_nq.long()
    pair_key, inv = torch.unique(keys, sorted=True, return_inverse=True)
    pair_bits = torch.zeros(pair_key.numel(), dtype=torch.int64, device=dev).scatter_add_(0, inv, bits)
    pair_owner = pair_key % n_own
    per_tile = torch.bincount(pair_key // n_own, minlength=n_tiles)
    tile_first = torch.cumsum(per_tile, 0) - per_tile
    n_ch = -(-per_tile // max_pairs)
    chunk_tile = torch.repeat_interleave(torch.arange(n_tiles, device=dev), n_ch)
    ch_first = torch.cumsum(n_ch, 0) - n_ch
    j = torch.arange(chunk_tile.numel(), device=dev) - ch_first[chunk_tile]
    chunk_lo = tile_first[chunk_tile] + j * max_pairs
    chunk_hi = torch.minimum(chunk_lo + max_pairs, tile_first[chunk_tile] + per_tile[chunk_tile])
    split = n_ch > 1
    split_n = torch.where(split, n_ch, 0)
    slot_first = torch.cumsum(split_n, 0) - split_n
    chunk_slot = torch.where(split[chunk_tile], slot_first[chunk_tile] + j, -1)
    computed = float((plan.own_nq.long()[pair_owner] * bn).sum())
    i32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    return KeyTiles(
        bn=bn, n_tiles=n_tiles, pair_owner=i32(pair_owner), pair_bits=pair_bits.contiguous(),
        chunk_tile=i32(chunk_tile), chunk_lo=i32(chunk_lo), chunk_hi=i32(chunk_hi), chunk_slot=i32(chunk_slot),
        split_tile=i32(torch.nonzero(split).flatten()), split_lo=i32(slot_first[split]),
        split_hi=i32(slot_first[split] + n_ch[split]),
        density=float(attended.sum()) / computed if computed else 1.0,
    )
