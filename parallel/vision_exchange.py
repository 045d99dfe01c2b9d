"""The ViT -> LM hand-off under a layout: frame groups computed where the balancer put them, merged
vision tokens sent by an autograd-aware all-to-all to the context rank that owns their positions.
A DeepStack model's merged features of its tapped ViT layers belong to the same positions: they
travel in the same rows (concatenated after the token, `VLM.vision_tokens`), so one all-to-all
with the same counts carries them, and its backward returns both gradients.

Every context rank of a pack holds the whole pack's patches and grids (the loader gives the pack
to each of them), so every rank computes the same plan: which rank runs which frame group
(vit_balance), which rank owns which vision token (the context split), and hence every count of
the all-to-all, without a metadata exchange. The all-to-all's backward returns each token's
gradient to the rank that ran its frame group.

Modes: ``balanced`` (cost-balanced groups, the default), ``owner`` (each video on the rank that
owns its first token: the naive split) and ``replicated`` (every context rank runs the whole
ViT and keeps its own tokens: no communication, c times the ViT work).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from parallel.collectives import all_to_all
from parallel.cp_split import LocalPack
from parallel.vit_balance import (
    FrameGroup,
    assign_by_cost,
    assign_to_token_owner,
    frame_groups,
    group_cost,
    imbalance,
)

ViTMode = Literal["balanced", "owner", "replicated"]


@dataclass
class VisionPlan:
    groups: list[FrameGroup]
    costs: list[float]
    runs_on: list[int]  # context rank that runs each group (-1: every rank, replicated)
    token_pos: torch.Tensor  # [N_vision] global position of each vision token
    token_owner: torch.Tensor  # [N_vision] context rank owning it
    cp: int

    def imbalance(self) -> float:
        if self.runs_on and self.runs_on[0] < 0:
            return 1.0
        return imbalance(self.costs, self.runs_on, self.cp)

    def tokens_run_by(self, rank: int) -> torch.Tensor:
        pieces = [torch.arange(g.token_start, g.token_start + g.tokens)
                  for g, r in zip(self.groups, self.runs_on) if r in (rank, -1)]
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)


def plan_vision(batch, lp: LocalPack, vision_token_id: int, vcfg, mode: ViTMode) -> VisionPlan:
    cp = len(lp.rows)
    host = getattr(batch, "host", None) or batch  # planned on the host: no wait for the GPU
    token_pos = (host.input_ids.cpu() == vision_token_id).nonzero()[:, 0]
    owner_of_pos = torch.empty(lp.total, dtype=torch.int64)
    for r, rows in enumerate(lp.rows):
        owner_of_pos[rows] = r
    token_owner = owner_of_pos[token_pos]
    groups = frame_groups(host.video_grid_thw.cpu(), vcfg.merge)
    if sum(g.tokens for g in groups) != token_pos.numel():
        raise ValueError(f"{token_pos.numel()} vision placeholders but the grids hold "
                         f"{sum(g.tokens for g in groups)} tokens")
    costs = [group_cost(g.patches, vcfg.hidden, vcfg.ffn) for g in groups]
    if mode == "balanced":
        runs_on = assign_by_cost(costs, cp)
    elif mode == "owner":
        runs_on = assign_to_token_owner(groups, token_owner)
    elif mode == "replicated":
        runs_on = [-1] * len(groups)
    else:
        raise ValueError(f"unknown ViT mode {mode!r}")
    return VisionPlan(groups, costs, runs_on, token_pos, token_owner, cp)


def _run_vit(model, batch, groups: list[FrameGroup]) -> torch.Tensor:
    """Rows of `VLM.vision_tokens` for `groups`, in order; an empty result still hangs on the
    graph so that every rank takes part in the all-to-all's backward, and has the dtype the
    other ranks' rows have (NCCL counts elements: a float32 receive buffer against bfloat16
    sends waits for bytes that never come; this hung the first bf16 run with the `owner` ViT)."""
    if not groups:
        anchor = sum(p.sum() for p in model.merger.parameters()) * 0.0
        return anchor + torch.zeros(0, model.vision_row_width, device=batch.pixel_patches.device,
                                    dtype=anchor.dtype)
    patches = torch.cat([batch.pixel_patches[g.patch_start:g.patch_start + g.patches] for g in groups])
    grid = torch.tensor([(1, g.rows, g.cols) for g in groups], dtype=torch.int32)
    return model.vision_tokens(patches, grid)


def place_vision(model, batch, lp: LocalPack, embeds: torch.Tensor, plan: VisionPlan, group,
                 events: list | None = None) -> torch.Tensor:
    """embeds [T_local, 1, H] with this rank's vision positions filled by their merged tokens.
    ``events``: CUDA event pairs around the hand-off's all-to-alls (parallel.collectives)."""
    me, dev = lp.rank, embeds.device
    if plan.runs_on and plan.runs_on[0] < 0:  # replicated: run all, keep mine
        tokens = _run_vit(model, batch, plan.groups)
        ids = (plan.token_owner == me).nonzero()[:, 0]
        recv = tokens[ids.to(dev, non_blocking=True)]
    else:
        mine = [g for g, r in zip(plan.groups, plan.runs_on) if r == me]
        tokens = _run_vit(model, batch, mine)
        run_here = plan.tokens_run_by(me)
        dest = plan.token_owner[run_here]
        order = torch.sort(dest, stable=True).indices
        send = torch.bincount(dest, minlength=plan.cp).tolist()
        from_each = []
        for s in range(plan.cp):
            ids_s = plan.tokens_run_by(s)
            from_each.append(ids_s[plan.token_owner[ids_s] == me])
        ids = torch.cat(from_each)
        # one dtype on every rank (see _run_vit): the LM's
        recv = all_to_all(tokens[order.to(dev, non_blocking=True)].to(embeds.dtype), send,
                          [int(x.numel()) for x in from_each], group, events)
    local = torch.searchsorted(lp.rows[me], plan.token_pos[ids]).to(dev, non_blocking=True)
    tokens = model.take_vision_rows(recv, local)
    return embeds.index_copy(0, local, tokens[:, None, :].to(embeds.dtype))
