"""Autograd-aware collectives over a process group (REFERENCES.md: a plain collective silently
gives the sending side no gradient).

- GatherRows: every rank holds some rows of a table (given by their global row numbers); the
  forward assembles the whole table on every rank (all-gather), the backward sends each row's
  gradient, summed over the ranks that used it, back to its owner (reduce-scatter).
- AllToAll: variable-size all-to-all of rows; the backward is the reverse all-to-all.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: list[torch.Tensor], rank: int, group):
        """x [n_rank, ...] holds rows[rank] of the table; returns the table [sum n, ...]."""
        ctx.rows, ctx.rank, ctx.group = rows, rank, group
        longest = max(int(r.numel()) for r in rows)
        total = sum(int(r.numel()) for r in rows)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        pieces = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        table = x.new_empty((total, *x.shape[1:]))
        for r, piece in zip(rows, pieces):
            table[r.to(x.device)] = piece[: r.numel()]
        return table

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows = ctx.rows
        longest = max(int(r.numel()) for r in rows)
        send = grad.new_zeros((len(rows), longest, *grad.shape[1:]))
        for i, r in enumerate(rows):
            send[i, : r.numel()] = grad[r.to(grad.device)]
        out = grad.new_empty((longest, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, send.flatten(0, 1).contiguous(), group=ctx.group)
        return out[: rows[ctx.rank].numel()], None, None, None


def gather_rows(x: torch.Tensor, rows: list[torch.Tensor], rank: int, group) -> torch.Tensor:
    if len(rows) == 1:
        return x
    return GatherRows.apply(x, rows, rank, group)


def _timed(events: list | None, x: torch.Tensor, run):
    """run(); with ``events`` (a list) and a GPU tensor, appends a (start, end) pair of CUDA
    events around it: benchmarks read the collective's time without synchronising the step."""
    if events is None or not x.is_cuda:
        return run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = run()
    end.record()
    events.append((start, end))
    return out


class AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group, events=None):
        """x: rows for rank 0, then rank 1, ... (counts `send`); returns rows from each rank in
        rank order (counts `recv`)."""
        ctx.send, ctx.recv, ctx.group, ctx.events = send, recv, group, events
        out = x.new_empty((sum(recv), *x.shape[1:]))
        _timed(events, x, lambda: dist.all_to_all_single(out, x.contiguous(), recv, send, group=group))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        _timed(ctx.events, grad, lambda: dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv,
                                                                group=ctx.group))
        return out, None, None, None, None


def all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group, events: list | None = None) -> torch.Tensor:
    """``events``: see `_timed` (the forward's and the backward's exchange both land there)."""
    if len(send) == 1:
        return x
    return AllToAll.apply(x, send, recv, group, events)
