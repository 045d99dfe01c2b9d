"""Tiny random Qwen3-MoE models built with transformers and saved locally (nothing downloaded),
and the two forwards the interop tests compare: transformers' own and longshot's."""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_SHAPE = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                  "num_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 512}
VISION_TOKEN = 299  # the text-only source's placeholder id (its fresh ViT's tokens go there)


def save_qwen3_moe(folder: Path, seed: int = 0, **overrides) -> Path:
    """A random Qwen3MoeForCausalLM saved as sharded safetensors (several shards on purpose).
    Differs from longshot's defaults wherever a config field can: rotary base, norm eps."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(**{**TEXT_SHAPE, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0},
                            "rms_norm_eps": 1e-5, "router_aux_loss_coef": 0.01, **overrides})
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg).eval()
    _perturb_norms(model)
    model.save_pretrained(folder, max_shard_size="150KB")
    return Path(folder)


def _perturb_norms(model) -> None:
    """Norm scales start at 1 in a fresh model: make them random so the map of each one matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)


def hf_logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=input_ids[None]).logits[0]


def longshot_logits(init_dir: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """The imported model built from `--preset from-hf:DIR` and loaded the way `train
    --init-from DIR` loads it; logits of one text document."""
    from jobs.checkpoint import Checkpoints
    from jobs.steps.train_loop import init_checkpoint
    from model.build import build_vlm, init_megatron
    from model.presets import preset

    model = build_vlm(preset(f"from-hf:{init_dir}"), init_megatron())
    model.load_state_dict(Checkpoints(init_dir).load_model_only(init_checkpoint(init_dir),
                                                                model.sharded_state_dict()))
    model.eval()
    n = input_ids.shape[0]
    positions = torch.arange(n).expand(3, n)
    with torch.no_grad():
        return model.language.logits(model.language.embed(input_ids), positions,
                                     torch.tensor([0, n], dtype=torch.int32))
