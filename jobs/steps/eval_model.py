"""A trained model for evaluation: a checkpoint (a run folder's latest, or an iter_NNNNNNN folder)
built with its run's config, weights only, and its attention switched between arms.

Arms: ``dense`` (exact attention), ``token`` and ``block`` (DSA's sparse attention at that
granularity, with the model's own top-k and block size). Switching an arm only points the
model's shared attention core elsewhere (model/training.configure_core); the weights stay.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from jobs.checkpoint import TRAIN_STATE, Checkpoints
from jobs.cli import BadInput

ARMS = ("dense", "token", "block")


def resolve_checkpoint(path: str | Path) -> Path:
    """The iter_NNNNNNN folder ``path`` names: itself, or a run folder's newest intact checkpoint."""
    path = Path(path).resolve()
    if (path / "metadata.json").is_file():
        return path
    if not path.exists():
        raise BadInput(f"{path}: checkpoint not found")
    ckpts = Checkpoints(path)
    step = ckpts.latest(log=lambda msg: None)
    if step is None:
        raise BadInput(f"{path}: neither a checkpoint folder (iter_NNNNNNN) nor a run folder with checkpoints")
    return ckpts.path(step)


def checkpoint_state(folder: Path) -> dict:
    """The train state saved with a checkpoint (step, stage, the run's config)."""
    state_file = Path(folder) / TRAIN_STATE
    if not state_file.is_file():
        raise BadInput(f"{folder}: no {TRAIN_STATE}: not a checkpoint written by `longshot train`")
    state = json.loads(state_file.read_text())
    if "config" not in state:
        raise BadInput(f"{state_file}: holds no run config")
    return state


class EvalModel:
    """One checkpoint's model in eval mode, on the GPU when there is one."""

    def __init__(self, folder: Path, log=print):
        from jobs.steps.train_loop import TrainConfig, model_config
        from model import megatron_compat
        from model.attention import CoreChoice
        from model.build import BuildOptions, build_vlm, init_megatron

        self.folder = Path(folder)
        state = checkpoint_state(self.folder)
        self.stage = state.get("stage", "dense")
        self.cfg = TrainConfig(**state["config"])
        self.model_cfg = model_config(self.cfg)
        self.on_gpu = not megatron_compat.needed()
        pg = init_megatron(seed=self.cfg.seed)
        self.core = CoreChoice()
        bf16 = self.cfg.dtype == "bf16" or (self.cfg.dtype == "auto" and self.on_gpu)
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = build_vlm(self.model_cfg, pg, self.core, BuildOptions(dtype=dtype))
        weights = Checkpoints(self.folder.parent.parent).load_model_only(self.folder, self.model.sharded_state_dict(),
                                                                         log=log)
        self.model.load_state_dict(weights)
        self.model.eval()
        self.device = next(self.model.parameters()).device

    def set_arm(self, arm: str, block_rule: str | None = None) -> None:
        """``block_rule`` (block arm): how blocks score keys instead of DSAConfig's default,
        'max', 'sum', 'pooled', or 'max+coarse2' (model/dsa/config.py)."""
        from model.training import configure_core

        if arm not in ARMS:
            raise BadInput(f"arm {arm!r}: choose among {', '.join(ARMS)}")
        dsa = replace(self.model_cfg.lm.dsa, granularity="block" if arm == "dense" else arm)
        configure_core(self.core, "dense" if arm == "dense" else "sparse", dsa, self.on_gpu)
        if arm == "block" and block_rule:
            self.core.dsa = replace(self.core.dsa, **block_rule_fields(block_rule))


def block_rule_fields(rule: str) -> dict:
    """model.dsa.config.block_rule_fields, a bad rule refused as bad input."""
    from model.dsa.config import block_rule_fields as fields

    try:
        return fields(rule)
    except ValueError as e:
        raise BadInput(str(e)) from None


_LOADED: dict[str, EvalModel] = {}


def loaded_model(folder: Path) -> EvalModel:
    """The model of ``folder``, built once per process (one at a time: a new folder replaces it)."""
    key = str(folder)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = EvalModel(folder, log=lambda msg: None)
    return _LOADED[key]
