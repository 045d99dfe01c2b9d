"""Running a function in N real processes with gloo, and the one-process reference they match.

Workers are spawned (torch.multiprocessing, start method spawn): each is a fresh interpreter
that imports Megatron and joins a gloo group on a free port; an exception in any worker fails
the test with its traceback. The reference runs in the pytest process itself (world size 1),
on the same weights and packs, and is handed to the workers through a file.
"""
from __future__ import annotations

import os
import re
import socket

import torch
import torch.multiprocessing as mp

from model.attention import CoreChoice
from model.build import build_vlm, init_megatron
from model.training import configure_core
from tests.model.vlm_batches import make_batch

EXPERT = re.compile(r"(\.local_experts\.)(\d+)(\.)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    fn(rank, world, *args)


def spawn(fn, world: int, *args) -> None:
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def packs(cfg, n: int, seed: int, docs, **kw) -> list:
    return [make_batch(cfg.lm.vocab, cfg.vision_token_id, seed=seed + i, docs=docs, **kw) for i in range(n)]


def reference(cfg, stage: str, batches: list, seed: int = 5) -> dict:
    """Weights, and per pack ce/indexer, and the gradient of the mean objective over the packs."""
    init_megatron(seed=1234)
    core = CoreChoice()
    configure_core(core, stage, cfg.lm.dsa, on_gpu=False)
    torch.manual_seed(seed)
    model = build_vlm(cfg, init_megatron(seed=1234), core)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    # the mean over packs, for the MoE load-balancing term too (its backward has its own scale)
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0 / len(batches)))
    core.indexer_weight /= len(batches)  # and for the indexer's injected gradient
    ces, idx, aux = [], [], []
    for b in batches:
        out = model(b)
        out.backward(stage, scale=1.0 / len(batches))
        ces.append(out.ce.item())
        idx.append(out.indexer.item())
        aux.append(out.aux.item())
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"state": state, "ce": ces, "indexer": idx, "aux": aux, "grads": grads}


def local_name(name: str, ep_rank: int, per_rank: int) -> str | None:
    """The name of a global parameter on expert rank `ep_rank` (None: another rank's expert)."""
    m = EXPERT.search(name)
    if not m:
        return name
    g = int(m.group(2))
    if g // per_rank != ep_rank:
        return None
    return name[:m.start(2)] + str(g % per_rank) + name[m.end(2):]


def local_state(ref: dict, key: str, ep_rank: int, per_rank: int) -> dict:
    out = {}
    for name, value in ref[key].items():
        local = local_name(name, ep_rank, per_rank)
        if local is not None:
            out[local] = value
    return out
