"""One training step of the VLM with Megatron's machinery: DDP with grad buffers, the
distributed optimizer (fp32 main params and Adam state sharded over data-parallel ranks),
gradient clipping, and Megatron's LR/WD schedule.

Stages of DSA (DESIGN.md): ``dense`` trains everything on dense attention; ``warmup`` trains
only the indexers (every other parameter is frozen before DDP is built, so neither grads nor
optimizer state exist for it) on the KL to dense attention; ``sparse`` trains everything on
sparse attention, the indexer on its KL. A stage fixes the trainable set, so a stage change
builds a new Trainer (the job does that at the configured step).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from model.attention import CoreChoice

Stage = Literal["dense", "warmup", "sparse"]


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 3e-4
    min_lr: float = 3e-5
    lr_warmup_steps: int = 10
    lr_decay_style: str = "cosine"
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepResult:
    loss: float  # ce + aux + indexer
    ce: float
    aux: float
    indexer: float
    n_labels: int
    grad_norm: float
    lr: float
    skipped: bool


def configure_core(core: CoreChoice, stage: Stage, dsa_settings, on_gpu: bool) -> None:
    """Point every layer's shared core at the stage's attention."""
    if stage == "dense":
        core.kind, core.dsa, core.local_indexer_grads = "dense", None, False
        return
    from model.dsa.config import DSAConfig, block_rule_fields

    core.kind = "dsa"
    core.local_indexer_grads = stage == "warmup"
    core.backend = "triton" if on_gpu else "reference"
    core.dsa = DSAConfig(index_heads=dsa_settings.index_heads, index_dim=dsa_settings.index_dim,
                         topk=dsa_settings.topk, granularity=dsa_settings.granularity,
                         block_q=dsa_settings.block_q, stage=stage, token_merge=dsa_settings.token_merge,
                         token_merge_backward=dsa_settings.token_merge_backward,
                         **block_rule_fields(dsa_settings.block_rule))


def mark_trainable(model, stage: Stage) -> None:
    """requires_grad for the stage: the warm-up trains the indexers alone. The indexers of layers
    kept dense (DSASettings.dense_layers) are never used, so they stay frozen in every stage, or
    weight decay alone would move them."""
    from model.attention import PackedSelfAttention

    idle = {id(p) for m in model.modules() if isinstance(m, PackedSelfAttention) and m.indexer is not None
            and not m.sparse for p in m.indexer.parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_((stage != "warmup" or ".indexer." in name) and id(p) not in idle)


class Trainer:
    def __init__(self, model, settings: OptimSettings, total_steps: int, stage: Stage,
                 pg_collection=None, start_step: int = 0):
        self.model = model
        self.stage = stage
        if stage == "warmup" and model.language.decoder.config.recompute_granularity is not None:
            raise ValueError("the DSA warm-up trains only the indexers, layer by layer in forward: "
                             "build its model without activation recomputation (it keeps no "
                             "activations for a backward anyway)")
        mark_trainable(model, stage)
        bf16 = model.config.bf16
        self.ddp = DistributedDataParallel(
            model.config,
            DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True,
                                          overlap_grad_reduce=False),
            model, pg_collection=pg_collection)
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=settings.lr, min_lr=settings.min_lr,
                            weight_decay=settings.weight_decay, adam_beta1=settings.adam_beta1,
                            adam_beta2=settings.adam_beta2, clip_grad=settings.clip_grad,
                            bf16=bf16, params_dtype=model.config.params_dtype,
                            use_distributed_optimizer=True),
            [self.ddp], pg_collection=pg_collection, use_gloo_process_groups=pg_collection is None)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=settings.lr, min_lr=settings.min_lr,
            lr_warmup_steps=min(settings.lr_warmup_steps, max(total_steps - 1, 0)),
            lr_decay_steps=max(total_steps, 1), lr_decay_style=settings.lr_decay_style,
            start_wd=settings.weight_decay, end_wd=settings.weight_decay,
            wd_incr_steps=max(total_steps, 1), wd_incr_style="constant")
        if start_step:  # one LR schedule over the whole run, across stage changes
            self.scheduler.step(increment=start_step)

    def step(self, batch) -> StepResult:
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        self.model.train()
        out = self.ddp(batch)
        out.backward(self.stage)
        self.ddp.finish_grad_sync()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        ok, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        aux, indexer = self.model.recorded_losses(out.ce.device)  # after backward: see there
        # The step's one read of its numbers (Megatron's clipping reads the gradient norm itself).
        ce, aux, indexer = torch.stack([out.ce.detach().float(), aux.float(), indexer.float()]).tolist()
        return StepResult(loss=ce + aux + indexer, ce=ce, aux=aux, indexer=indexer,
                          n_labels=out.n_labels,
                          grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                          lr=float(lr), skipped=not ok)

    # -- checkpoint pieces ---------------------------------------------------------------------
    def _materialize_adam_state(self) -> None:
        # Without Apex/TE, Megatron's DistributedOptimizer.state_dict() reads torch Adam's
        # per-parameter 'step' and requires one common value, so a fresh optimizer (empty state)
        # cannot describe the state it is about to load. Zero state with step 0 is what Adam
        # holds before its first step; loading then overwrites all of it.
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = opt.optimizer
            for group in inner.param_groups:
                for p in group["params"]:
                    if not inner.state[p]:
                        inner.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                          "exp_avg": torch.zeros_like(p.data),
                                          "exp_avg_sq": torch.zeros_like(p.data)}

    def sharded_state_dict(self, is_loading: bool = False) -> dict:
        if is_loading:
            self._materialize_adam_state()
        metadata = {"distrib_optim_sharding_type": "dp_reshardable"}
        model_sd = self.model.sharded_state_dict(metadata=metadata)
        return {"model": model_sd,
                "optimizer": self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                               metadata=metadata)}

    def load(self, loaded: dict) -> None:
        self.model.load_state_dict(loaded["model"])
        with torch.no_grad():  # copies into main params that are views of trainable leaves
            self.optimizer.load_state_dict(loaded["optimizer"])
        # Without Apex/TE, Megatron keeps Adam's step count in each param group ('step') and
        # restores it into the per-parameter state as one shared tensor, which the parameter
        # state copy then overwrites; torch Adam needs its own step tensor per parameter.
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = opt.optimizer
            for group in inner.param_groups:
                if "step" not in group:
                    continue
                for p in group["params"]:
                    if inner.state.get(p):
                        inner.state[p]["step"] = torch.tensor(float(group["step"]))
