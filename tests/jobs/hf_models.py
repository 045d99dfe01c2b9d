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


def imported_model(init_dir: Path, weights: Path | None = None):
    """The imported model built from `--preset from-hf:DIR` and loaded the way `train
    --init-from DIR` loads it (or from `weights`: a run trained from it)."""
    from jobs.steps.train_loop import load_init_weights
    from model.build import build_vlm, init_megatron
    from model.presets import preset

    model = build_vlm(preset(f"from-hf:{init_dir}"), init_megatron())
    model.load_state_dict(load_init_weights(weights or init_dir, model.sharded_state_dict()))
    return model.eval()


def longshot_logits(init_dir: Path, input_ids: torch.Tensor, weights: Path | None = None) -> torch.Tensor:
    """Logits of one text document from the imported model (or a run trained from it)."""
    model = imported_model(init_dir, weights)
    n = input_ids.shape[0]
    positions = torch.arange(n).expand(3, n)
    with torch.no_grad():
        return model.language.logits(model.language.embed(input_ids), positions,
                                     torch.tensor([0, n], dtype=torch.int32))

VL_IDS = {"image_token_id": 297, "video_token_id": 298, "vision_start_token_id": 295,
          "vision_end_token_id": 296}
VL_VISION = {"depth": 3, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "patch_size": 16,
             "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 64,
             "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1]}


def save_qwen3_vl_moe(folder: Path, seed: int = 0, **token_ids) -> Path:
    """A random Qwen3VLMoeForConditionalGeneration (patch 16, DeepStack from two ViT layers,
    interleaved mrope) saved as sharded safetensors; `token_ids` replace VL_IDS' (a tokenizer's own)."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    text = {**TEXT_SHAPE, "rms_norm_eps": 1e-5, "moe_intermediate_size": 24,  # 2I != H: orientation shows
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "mrope_section": [4, 2, 2]}}
    cfg = Qwen3VLMoeConfig(text_config=text, vision_config=VL_VISION, tie_word_embeddings=False,
                           **{**VL_IDS, **token_ids})
    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(cfg).eval()
    _perturb_norms(model)
    with torch.no_grad():  # random biases too (a fresh model has zeros in some)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            if "attn.qkv.weight" in name:  # sharper ViT attention: its rotary then shows
                p.mul_(8)
    model.save_pretrained(folder, max_shard_size="150KB")
    return Path(folder)


def video_sample(grid=(2, 4, 4), text_before=7, text_after=5, seed=0):
    """A short video as uint8 patches in longshot's order and its token ids in Qwen3-VL's layout:
    text, then per temporal group <|vision_start|> placeholders <|vision_end|>, then text."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    patch = VL_VISION["patch_size"]
    values = VL_VISION["temporal_patch_size"] * patch * patch * 3
    patches = torch.randint(0, 256, (t * h * w, values), generator=g, dtype=torch.uint8)
    per_group = h * w // VL_VISION["spatial_merge_size"] ** 2
    ids = [torch.randint(0, 290, (text_before,), generator=g)]
    for _ in range(t):
        ids += [torch.tensor([VL_IDS["vision_start_token_id"]]),
                torch.full((per_group,), VL_IDS["video_token_id"]), torch.tensor([VL_IDS["vision_end_token_id"]])]
    ids.append(torch.randint(0, 290, (text_after,), generator=g))
    return torch.cat(ids), patches, torch.tensor([grid])


def hf_vl_logits(folder: Path, ids: torch.Tensor, patches: torch.Tensor | None, grid: torch.Tensor | None):
    """transformers' logits, and the (t, h, w) positions it computed for the sequence."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    kw = {}
    types = (ids == VL_IDS["video_token_id"]).int()[None] * 2
    if patches is not None:
        kw = {"pixel_values_videos": hf_pixels(patches), "video_grid_thw": grid, "mm_token_type_ids": types}
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(ids[None], types, video_grid_thw=grid)
        logits = model(input_ids=ids[None], position_ids=positions, **kw).logits[0]
    return logits, positions[:, 0]


def longshot_vl_logits(init_dir: Path, ids, patches, grid, positions) -> torch.Tensor:
    from types import SimpleNamespace

    model = imported_model(init_dir)
    values = VL_VISION["temporal_patch_size"] * VL_VISION["patch_size"] ** 2 * 3
    batch = SimpleNamespace(
        input_ids=ids, position_ids=positions, cu_seqlens=torch.tensor([0, len(ids)], dtype=torch.int32),
        pixel_patches=patches if patches is not None else torch.zeros(0, values, dtype=torch.uint8),
        video_grid_thw=grid if grid is not None else torch.zeros(0, 3, dtype=torch.int64))
    with torch.no_grad():
        return model.logits(batch)


def hf_video_features(folder: Path, patches: torch.Tensor, grid: torch.Tensor):
    """transformers' merged video tokens and DeepStack features of the vision tower."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.model.get_video_features(hf_pixels(patches), grid, return_dict=True)
    def joined(t):  # one tensor per video, or already one
        return torch.cat(list(t)) if isinstance(t, (list, tuple)) else t

    return joined(out.pooler_output), [joined(f) for f in out.deepstack_features]


def longshot_video_features(init_dir: Path, patches: torch.Tensor, grid: torch.Tensor):
    with torch.no_grad():
        return imported_model(init_dir).vision_features(patches, grid)


def hf_pixels(patches: torch.Tensor) -> torch.Tensor:
    """longshot's uint8 patches, each (T, P, P, C) -> transformers' normalised (C, T, P, P)."""
    v = VL_VISION
    pixels = patches.view(-1, v["temporal_patch_size"], v["patch_size"], v["patch_size"], 3)
    return pixels.permute(0, 4, 1, 2, 3).reshape(len(patches), -1) / 127.5 - 1.0
