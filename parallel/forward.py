"""The VLM's forward on a layout: what `VLM.parallel` runs in place of the one-process forward.

Per pack (every context rank of a data-parallel replica holds the same pack):
1. the pack is split over the context ranks (cp_split), chunk borders on DSA block borders;
2. the ViT runs on this rank's frame groups and the merged tokens (with a DeepStack model's
   merged layer features) travel to the rank owning their positions (vision_exchange);
3. the LM runs on this rank's rows; its attention gathers keys, values and indexer keys of the
   whole pack (the core's QueryRows);
4. the losses are reduced over the context group. The objective this rank backpropagates is
   context_size x (its labeled rows' cross-entropy sum) / (labels in the pack): Megatron's DDP
   averages gradients over data x context ranks, which then gives the one-process gradient of
   the pack's mean cross entropy (and the mean over replicas' packs). The MoE load-balancing
   loss is split the same way by Megatron's router (token counts reduced over the context
   group, probabilities summed over local tokens), so its backward scale is the context size too,
   times a correction: the router takes the pack's token count to be (local tokens) x (context
   size), exact only for equal shares, and the loss divides by that count squared; chunk borders
   on DSA blocks make shares unequal, so each rank rescales its part by (share x context size)^2.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

from model import moe_aux
from model.attention import QueryRows
from model.vlm import VLMOutput
from parallel.collectives import gather_rows
from parallel.cp_split import local_pack
from parallel.groups import Groups
from parallel.vision_exchange import ViTMode, place_vision, plan_vision


class ParallelForward:
    def __init__(self, groups: Groups, vit_mode: ViTMode = "balanced"):
        self.groups = groups
        self.vit_mode = vit_mode
        self.last_vision_plan = None  # for reports: the ViT load imbalance of the last pack
        self.aux_fix = 1.0
        # Set to a list to time the ViT hand-off's all-to-alls (CUDA event pairs; benchmarks).
        self.handoff_events: list | None = None

    def sum_over_cp(self, values: torch.Tensor) -> torch.Tensor:
        """Per-rank parts of a pack's numbers -> the pack's numbers, on the device they are on
        (NCCL reduces only GPU tensors), with no host round trip: the caller reads them once."""
        t = values.detach().to(torch.float64)
        if self.groups.layout.cp > 1:
            dist.all_reduce(t, group=self.groups.cp)
        return t

    def forward(self, model, batch) -> VLMOutput:
        moe_aux.clear()
        cp, rank, group = self.groups.layout.cp, self.groups.cp_rank, self.groups.cp
        lp = local_pack(batch, cp, rank, align=model.cfg.lm.dsa.block_q)
        dev = lp.input_ids.device
        aux_fix = self.aux_fix = (lp.share * cp) ** 2
        MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(cp * aux_fix))
        embeds = model.language.embed(lp.input_ids)
        if model.deepstack_injection is not None:
            model.deepstack_injection.clear()  # set again by place_vision when the pack has video
        if batch.pixel_patches.shape[0]:
            plan = plan_vision(batch, lp, model.cfg.vision_token_id, model.cfg.vision, self.vit_mode)
            self.last_vision_plan = plan
            embeds = place_vision(model, batch, lp, embeds, plan, group, self.handoff_events)
        embeds = model.finish_lm_input(embeds)
        # Stays set after forward: recomputation in backward runs the attention again.
        model.core.plans = {}  # a new pack: new DSA plans
        model.core.rows = QueryRows(
            q_pos=lp.q_pos, q_doc=lp.q_doc, share=lp.share, grad_scale=float(cp), host_pos=lp.host_pos,
            gather=lambda x: gather_rows(x, lp.rows_on_device, rank, group))
        out = model.language(embeds, lp.position_ids, lp.cu_seqlens, lp.labels)
        aux = moe_aux.value(model.cfg.lm.aux_loss_coeff).to(dev) * aux_fix
        ce_sum, indexer, aux = self.sum_over_cp(torch.stack(
            [out.ce_sum.detach().float(), out.indexer_loss.detach().float().to(dev), aux.float()]))
        n = max(lp.n_labels, 1)  # counted on the host from the pack's labels: no sync
        local = out.ce_sum * (cp / n)
        return VLMOutput(
            ce=(ce_sum / n).float(),
            indexer=(indexer * model.cfg.lm.dsa.indexer_loss_coeff).float(),
            aux=aux.float(), n_labels=lp.n_labels, local_objective=local)
