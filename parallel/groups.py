"""Process groups of a layout: Megatron's global state for the LM, a separate collection for the ViT.

Some of Megatron's MoE code reads the global parallel_state, so the global groups are the LM's
(tensor 1, context c, expert e, the rest data; REFERENCES.md). Their membership is checked
against a HyperCommGrid of the same layout, the description this package reasons with. The ViT
is data-parallel over every rank: its collection comes from a grid of its own (tensor 1, data
all ranks, pipeline 1), so its modules never see the LM's context or expert groups. With tensor
and pipeline parallel 1 the ViT's data group is the LM's data x context group, which is why one
Megatron DDP reduces both towers' gradients correctly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from megatron.core.hyper_comm_grid import HyperCommGrid
from megatron.core.process_groups_config import ProcessGroupCollection

from parallel.layout import Layout


@dataclass
class Groups:
    layout: Layout
    lm: ProcessGroupCollection
    vit: ProcessGroupCollection
    rank: int

    @property
    def cp(self) -> dist.ProcessGroup:
        return self.lm.cp

    @property
    def cp_rank(self) -> int:
        return self.layout.cp_rank(self.rank)

    @property
    def dp_rank(self) -> int:
        return self.layout.dp_rank(self.rank)


def init_layout(layout: Layout, seed: int = 1234) -> Groups:
    """Start torch.distributed if needed (its world must be layout.world), set Megatron's global
    groups to the LM layout (replacing a different earlier one) and build the ViT's groups."""
    from megatron.core import parallel_state

    from model.build import init_megatron

    if parallel_state.model_parallel_is_initialized() and (
            parallel_state.get_context_parallel_world_size() != layout.cp
            or parallel_state.get_expert_model_parallel_world_size() != layout.ep):
        parallel_state.destroy_model_parallel()
    lm = init_megatron(seed=seed, expert_parallel=layout.ep, context_parallel=layout.cp)
    if dist.get_world_size() != layout.world:
        raise ValueError(f"layout {layout} needs {layout.world} ranks, not {dist.get_world_size()}")
    _check_against_grid(layout, lm)
    return Groups(layout=layout, lm=lm, vit=vit_collection(layout.world), rank=dist.get_rank())


def _members(group) -> list[int]:
    return sorted(dist.get_process_group_ranks(group))


def _check_against_grid(layout: Layout, lm: ProcessGroupCollection) -> None:
    """Megatron's groups must be the rows of the layout's grids (dense and expert views)."""
    dense = HyperCommGrid([1, layout.cp, layout.dp, 1], ["tp", "cp", "dp", "pp"])
    expert = HyperCommGrid([1, layout.ep, layout.world // layout.ep, 1], ["tp", "ep", "dp", "pp"])
    for grid, dims, group in ((dense, "cp", lm.cp), (dense, "dp", lm.dp),
                              (dense, ["cp", "dp"], lm.dp_cp), (expert, "ep", lm.ep),
                              (expert, "dp", lm.expt_dp)):
        if _members(group) not in [sorted(r) for r in grid.get_rank_enum(dims)]:
            raise RuntimeError(f"Megatron's {dims} group {_members(group)} is not a row of the "
                               f"{layout} grid {grid.get_rank_enum(dims)}")


def vit_collection(world: int) -> ProcessGroupCollection:
    """The ViT's groups: data parallel over all `world` ranks; tensor, context, pipeline 1."""
    grid = HyperCommGrid([1, world, 1], ["tp", "dp", "pp"])
    tp, dp, pp = grid.create_pg("tp"), grid.create_pg("dp"), grid.create_pg("pp")
    return ProcessGroupCollection(tp=tp, pp=pp, cp=tp, tp_cp=tp, dp=dp, dp_cp=dp, mp=tp)
