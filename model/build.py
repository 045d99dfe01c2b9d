"""Building a VLM: Megatron global state, configs, the module, and the attention core choice.

`init_megatron` sets up torch.distributed (gloo on the CPU, NCCL on a GPU; a single process
when no launcher set RANK/WORLD_SIZE), Megatron's parallel groups (tensor parallel 1; expert
parallel as asked; the rest data parallel) and its RNG streams, applying the CPU compatibility
layer first when there is no GPU. `build_vlm` then makes the model on the compute device (or
the meta device, to count parameters of sizes that do not fit).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from model import megatron_compat, megatron_fallbacks
from model.attention import CoreChoice
from model.config import VLMConfig
from model.megatron_configs import lm_transformer_config, vit_transformer_config


def init_megatron(seed: int = 1234, expert_parallel: int = 1, context_parallel: int = 1):
    """Idempotent; returns the ProcessGroupCollection of the global groups (the LM's layout:
    tensor parallel 1, context parallel and expert parallel as asked, the rest data parallel)."""
    megatron_compat.apply()
    megatron_fallbacks.apply()
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ or "MASTER_ADDR" in os.environ:  # a launcher's ranks: env://
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            dist.init_process_group(backend, rank=int(os.environ.get("RANK", "0")),
                                    world_size=int(os.environ.get("WORLD_SIZE", "1")))
        else:
            # One process: a private rendezvous that stays out of os.environ, or every command
            # this process starts later (a training run, torchrun's ranks) would inherit its
            # address and try to bind the port this process holds.
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                                    world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1,
                                                 context_parallel_size=context_parallel,
                                                 expert_model_parallel_size=expert_parallel)
    # On the CPU the compat layer's tracker must stay installed (no force reset).
    model_parallel_cuda_manual_seed(seed, force_reset_rng=not megatron_compat.needed())
    torch.manual_seed(seed)
    return ProcessGroupCollection.use_mpu_process_groups()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class BuildOptions:
    dtype: torch.dtype = torch.float32
    meta: bool = False  # parameters without storage: for counting only
    max_sequence_length: int = 262_144
    expert_parallel: int = 1
    recompute: bool = False


def build_vlm(cfg: VLMConfig, pg_collection, core: CoreChoice | None = None,
              opts: BuildOptions = BuildOptions(), vit_pg_collection=None):
    """`pg_collection` is the LM's; `vit_pg_collection` the ViT's own layout (default: the LM's)."""
    from model.vlm import VLM

    on_cpu = opts.meta or megatron_compat.needed()
    common = {"dtype": opts.dtype, "init_std": cfg.init_std, "cpu_init": on_cpu, "initialize": not opts.meta}
    dispatcher = "allgather" if megatron_compat.needed() and opts.expert_parallel == 1 else "alltoall"
    lm_config = lm_transformer_config(cfg.lm, expert_parallel=opts.expert_parallel,
                                      dispatcher=dispatcher, recompute=opts.recompute, **common)
    # DeepStack taps ViT layer outputs during forward: a recomputed ViT would hand them over
    # without their graph, so a ViT with DeepStack keeps its activations.
    vit_config = vit_transformer_config(cfg.vision, recompute=opts.recompute and not cfg.vision.deepstack,
                                        **common)
    core = core or CoreChoice(kind="dense")
    if opts.meta:
        with torch.device("meta"):
            return VLM(cfg, vit_config, lm_config, core, pg_collection, opts.max_sequence_length,
                       vit_pg_collection)
    model = VLM(cfg, vit_config, lm_config, core, pg_collection, opts.max_sequence_length,
                vit_pg_collection)
    return model.to(device=megatron_compat.compute_device(), dtype=opts.dtype)
