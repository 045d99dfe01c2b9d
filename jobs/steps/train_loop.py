"""The training loop: resume from the latest checkpoint, train to `steps`, checkpoint and log.

Training is a loop, not units, so it has its own resumability (jobs/checkpoint.py) next to the
job runtime's ideas: one run per folder (FolderLock, rank 0), the run's config stored and a
changed config refused unless forced, and every step's metrics logged once (jobs/steps/
train_metrics.py). Stage changes of DSA (dense warm-up of the indexer, then sparse) happen at
configured steps: the trainable set changes, so the trainer is rebuilt around a copy of the
model (see model/training.py).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist

from jobs.atomic import atomic_write_bytes
from jobs.checkpoint import Checkpoints
from jobs.job import config_hash
from jobs.lock import FolderLock
from jobs.runtime import ConfigMismatch
from jobs.steps.train_metrics import METRICS_FILE, MetricsLog

STATE_DIR = Path(".longshot") / "train"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the numbers of a run (hashed; a change needs --force)."""

    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # e.g. vocab, vision_token_id, attention
    steps: int = 20
    seed: int = 1234
    attention: str = "dense"  # dense | dsa
    dsa_warmup_steps: int = 0  # with dsa: steps [0, W) train the indexer alone on dense attention
    dsa_warmup_lr: float | None = None  # the warm-up's peak LR (None: optim's); the indexer alone trains there
    dsa: dict = field(default_factory=dict)  # DSASettings overrides: topk, granularity, block_q
    optim: dict = field(default_factory=dict)  # OptimSettings overrides
    dtype: str = "auto"  # auto = bf16 on a GPU, fp32 on the CPU
    recompute: bool = False
    save_every: int = 10
    keep: int = 2
    data: dict = field(default_factory=dict)  # {"plan", "dataset"} or {"synthetic": SyntheticSpec fields}
    init_from: str | None = None  # a checkpoint, run or import-hf folder: model weights only
    cp: int = 1  # LM context parallel size (parallel/); the rest of the ranks are data parallel
    ep: int = 1  # LM expert parallel size (divides the number of ranks)
    vit_layout: str = "balanced"  # ViT under context parallel: balanced | owner | replicated

    def to_dict(self) -> dict:
        return asdict(self)

    def stage_at(self, step: int) -> str:
        if self.attention == "dense":
            return "dense"
        return "warmup" if step < self.dsa_warmup_steps else "sparse"

    @property
    def switch_step(self) -> int | None:
        """The step that ends a DSA warm-up inside the run: always checkpointed and never pruned."""
        if self.attention == "dsa" and 0 < self.dsa_warmup_steps < self.steps:
            return self.dsa_warmup_steps
        return None


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def check_run_config(run_dir: Path, cfg: TrainConfig, force: bool) -> None:
    """Like the job runtime's check: a folder holds one run's config; another needs --force,
    which deletes that run's checkpoints and metrics (and nothing else)."""
    meta_path = run_dir / STATE_DIR / "job.json"
    meta = {"job": "train", "config": cfg.to_dict(), "config_hash": config_hash(cfg.to_dict())}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old["config_hash"] == meta["config_hash"]:
            return
        # a field added to TrainConfig after the run was made holds its default there: the same
        # run, so it resumes (and its stored config is brought up to date below)
        def canon(c: dict) -> dict:
            return json.loads(json.dumps(c, default=str))

        old_cfg = {**canon(TrainConfig().to_dict()), **old["config"]}
        new_cfg = canon(meta["config"])
        changed = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        if changed and not force:
            raise ConfigMismatch(
                f"{run_dir} holds a training run made with another config (changed: "
                f"{', '.join(changed)}). Its checkpoints are kept. To start over with the new "
                "config, run again with --force; or choose another run folder.")
        if changed:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
    atomic_write_bytes(meta_path, json.dumps(meta, sort_keys=True, indent=1, default=str).encode())


def stored_config(run_dir: Path) -> TrainConfig:
    meta_path = Path(run_dir) / STATE_DIR / "job.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{run_dir} holds no training run to resume (no {meta_path})")
    return TrainConfig(**json.loads(meta_path.read_text())["config"])


def model_config(cfg: TrainConfig):
    """The VLMConfig a run trains: its preset with the run's overrides and DSA settings."""
    from model.config import DSASettings
    from model.presets import preset

    base = preset(cfg.preset, **cfg.model_overrides)
    dsa = DSASettings(**{**asdict(base.lm.dsa), **cfg.dsa})
    return base.with_overrides(dsa=dsa, attention=cfg.attention)


class _Session:
    """Model, trainer and data of one process of a run."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, workers: int, jpeg_on_device: bool = False):
        from model import megatron_compat
        from model.attention import CoreChoice
        from model.build import BuildOptions, init_megatron
        from parallel.groups import init_layout
        from parallel.layout import Layout

        self.cfg, self.run_dir, self.workers = cfg, run_dir, workers
        self.jpeg_on_device = jpeg_on_device
        self.on_gpu = not megatron_compat.needed()
        self.groups = None
        if cfg.cp > 1 or cfg.ep > 1:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            self.groups = init_layout(Layout.for_world(world, cfg.cp, cfg.ep), seed=cfg.seed)
            self.pg = self.groups.lm
        else:
            self.pg = init_megatron(seed=cfg.seed)
        self.rank, self.world = _rank_world()
        # data-parallel replicas read different packs; the context ranks of one replica share one
        self.dp_rank = self.groups.dp_rank if self.groups else self.rank
        self.dp = self.groups.layout.dp if self.groups else self.world
        self.model_cfg = model_config(cfg)
        dtype = {"auto": torch.bfloat16 if self.on_gpu else torch.float32,
                 "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.dtype]
        self.opts = BuildOptions(dtype=dtype, recompute=cfg.recompute, expert_parallel=cfg.ep)
        self.core = CoreChoice()
        self.ckpts = Checkpoints(run_dir, keep=cfg.keep, pinned=[cfg.switch_step] if cfg.switch_step else [])

    def build_trainer(self, stage: str, weights_from=None, start_step: int = 0):
        from model.build import build_vlm
        from model.training import OptimSettings, Trainer, configure_core

        configure_core(self.core, stage, self.model_cfg.lm.dsa, self.on_gpu)
        # the warm-up keeps no activations for a backward: nothing to recompute (model/attention.py)
        opts = replace(self.opts, recompute=self.opts.recompute and stage != "warmup")
        model = build_vlm(self.model_cfg, self.pg, self.core, opts,
                          vit_pg_collection=self.groups.vit if self.groups else None)
        if self.groups is not None and self.cfg.cp > 1:
            from parallel.forward import ParallelForward

            model.parallel = ParallelForward(self.groups, vit_mode=self.cfg.vit_layout)
        if weights_from is not None:
            model.load_state_dict(weights_from.state_dict())
        optim = dict(self.cfg.optim)
        if stage == "warmup" and self.cfg.dsa_warmup_lr is not None:
            optim["lr"] = self.cfg.dsa_warmup_lr
        return Trainer(model, OptimSettings(**optim), self.cfg.steps, stage, self.pg, start_step=start_step)

    def packs(self):
        from jobs.steps.train_data import SyntheticPacks, SyntheticSpec

        data = self.cfg.data
        if "synthetic" in data:
            spec = dict(data["synthetic"])
            spec.setdefault("vocab", self.model_cfg.lm.vocab)
            spec.setdefault("vision_token_id", self.model_cfg.vision_token_id)
            return SyntheticPacks(SyntheticSpec(**spec))
        from shards.load_patches import PatchGeometry
        from shards.loader import PackDataset

        v = self.model_cfg.vision  # the model's patch geometry (an imported model's own)
        geometry = PatchGeometry(v.patch, v.temporal_patch, v.merge)
        real = PackDataset(data["plan"], data["dataset"], vision_token_id=self.model_cfg.vision_token_id,
                           geometry=geometry, jpeg_on_device=self.jpeg_on_device)
        if "retrieval" not in data:
            return real
        from jobs.steps.train_retrieval import RetrievalMix, RetrievalSpec

        spec = RetrievalSpec(**data["retrieval"], steps=self.cfg.steps, seed=self.cfg.seed)
        return RetrievalMix(real, spec, data["dataset"], self.model_cfg.vision_token_id, geometry)


def train(cfg: TrainConfig, run_dir: Path, *, force: bool = False, workers: int = 0,
          jpeg_on_device: bool = False, log=print) -> dict:
    """Run (or resume) training in `run_dir`; returns a summary of this invocation.

    `workers` and `jpeg_on_device` say how packs are loaded, not what they hold, so they are not
    part of the run's config and may change between a run and its resume: with
    `jpeg_on_device` JPEG frames reach the trainer's device compressed and are decoded there
    (nvJPEG; shards/gpu_jpeg.py), for when loader cores are scarce."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    lock = FolderLock(run_dir).acquire() if rank0 else None
    try:
        if rank0:
            check_run_config(run_dir, cfg, force)
        return _train(cfg, run_dir, workers, log, rank0, jpeg_on_device)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, run_dir: Path, workers: int, log, rank0: bool,
           jpeg_on_device: bool = False) -> dict:
    from jobs.steps.train_data import batches

    s = _Session(cfg, run_dir, workers, jpeg_on_device)
    start = s.ckpts.latest(log) or 0  # the newest intact checkpoint; damaged ones are named
    # The checkpoint at `start` was written by the trainer of step start-1's stage.
    trainer = s.build_trainer(cfg.stage_at(start - 1 if start else 0))
    if start:
        loaded, state = s.ckpts.load(start, trainer.sharded_state_dict(is_loading=True))
        trainer.load(loaded)
        trainer.scheduler.load_state_dict(state["scheduler"])
        log(f"resumed from {s.ckpts.path(start)} (step {start}, stage {trainer.stage})")
    elif cfg.init_from:
        weights = load_init_weights(Path(cfg.init_from), trainer.model.sharded_state_dict(),
                                    log=log if rank0 else lambda msg: None)
        trainer.model.load_state_dict(weights)
        # With bf16 the optimizer holds fp32 master copies made when it was built: refresh them,
        # or the first update writes the freshly initialised weights back into the model.
        trainer.optimizer.reload_model_params()
        log(f"initialised the model from {cfg.init_from}")
    metrics = MetricsLog(run_dir, start, enabled=rank0)
    device = next(trainer.model.parameters()).device
    data = batches(s.packs(), cfg.seed, start, cfg.steps, s.dp_rank, s.dp, workers)
    summary = {"start_step": start, "steps": cfg.steps, "losses": []}
    try:
        for step in range(start, cfg.steps):
            stage = cfg.stage_at(step)
            if stage != trainer.stage:
                log(f"step {step}: DSA stage {trainer.stage} -> {stage}")
                trainer = s.build_trainer(stage, weights_from=trainer.model, start_step=step)
            batch = next(data).to(device)
            if s.on_gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = trainer.step(batch)
            if s.on_gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens = batch.num_tokens * s.dp
            rec = {"loss": res.loss, "ce": res.ce, "aux": res.aux, "indexer": res.indexer,
                   "grad_norm": res.grad_norm, "lr": res.lr, "stage": stage, "tokens": tokens,
                   "tokens_per_s": tokens / dt, "step_time_s": dt, "skipped": res.skipped}
            if s.on_gpu:
                rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            metrics.log(step + 1, rec)
            summary["losses"].append(res.loss)
            if rank0:
                log(f"step {step + 1}/{cfg.steps} loss {res.loss:.4f} (ce {res.ce:.4f} aux "
                    f"{res.aux:.4f} idx {res.indexer:.4f}) | {tokens / dt:,.0f} tok/s | "
                    f"{dt:.3f} s/step | lr {res.lr:.2e} | {stage}")
            if (step + 1) % cfg.save_every == 0 or step + 1 in (cfg.steps, cfg.switch_step):
                s.ckpts.save(step + 1, trainer.sharded_state_dict(),
                             {"step": step + 1, "scheduler": trainer.scheduler.state_dict(),
                              "stage": stage, "config": cfg.to_dict()})
    finally:
        metrics.close()
    return summary


def init_checkpoint(source: Path, log=print) -> tuple[Path, bool]:
    """(checkpoint folder, already verified) of what --init-from names: a checkpoint
    (iter_NNNNNNN), or a run or `import-hf` folder (its newest intact checkpoint, which choosing
    it verified). Collective."""
    ckpts = Checkpoints(Path(source))
    step = ckpts.latest(log)
    if step is not None:
        return ckpts.path(step), True
    return Path(source), False


def load_init_weights(source: Path, sharded_model_state: dict, log=print) -> dict:
    """Model weights from what --init-from names (see init_checkpoint). Collective. Each
    checkpoint is hashed once."""
    path, verified = init_checkpoint(source, log)
    return Checkpoints(Path(source)).load_model_only(path, sharded_model_state, log, verified=verified)


def flush_print(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)
