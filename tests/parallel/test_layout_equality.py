"""Every layout gives the loss and gradients of one process on the same packs (fp32).

Real gloo groups in spawned processes, Megatron's DDP reducing the gradients (data x context
mean, experts over their expert data-parallel group), fresh random weights and packs each run.
Covers context parallel 2 and 4 with dense attention, DSA sparse (also under activation
recomputation, whose layers compute the indexer loss in backward) and the DSA warm-up, expert
parallel 2 and 4, data parallel, the three ViT placements, and a Qwen3-VL-shaped model whose
DeepStack features travel with the merged tokens.
"""
import random
from dataclasses import replace

import torch

from model.presets import preset
from tests.parallel.harness import packs, reference, spawn
from tests.parallel.workers import equality_worker

CFG = preset("tiny")
# Documents of (text tokens, merged video grid): two videos of several frame groups and a text-only
# document; 212 tokens, long enough that DSA's top-16 selection is sparse.
DOCS = ((60, (4, 4, 4)), (40, None), (30, (3, 2, 3)))
# The tiny shape with Qwen3-VL's parts: DeepStack features of both ViT layers added after LM
# layers 0 and 1, a learned ViT position grid, axial ViT rotary, interleaved LM rotary.
DEEPSTACK_CFG = replace(
    CFG, vision=replace(CFG.vision, deepstack=(0, 1), position_grid=4, rope_layout="axial", final_norm=False),
    lm=replace(CFG.lm, mrope_section=(4, 2, 2), mrope_layout="interleaved"))


def _run(tmp_path, world: int, cases: list[dict], cfg=CFG, **pack_options) -> None:
    seed = random.randrange(1 << 16)
    batches = packs(cfg, world, seed, DOCS, **pack_options)
    refs = {}
    for case in cases:
        dp = world // case["cp"]
        if (case["stage"], dp) not in refs:
            refs[(case["stage"], dp)] = reference(cfg, case["stage"], batches[:dp], seed=seed)
    path = tmp_path / "cases.pt"
    torch.save({"cfg": cfg.to_dict(), "cases": cases, "refs": refs, "batches": batches}, path)
    spawn(equality_worker, world, str(path))


def test_two_processes(tmp_path):
    _run(tmp_path, 2, [
        {"cp": 2, "ep": 1, "stage": "dense", "vit": "balanced"},
        {"cp": 2, "ep": 1, "stage": "sparse", "vit": "balanced"},
        {"cp": 2, "ep": 1, "stage": "sparse", "vit": "owner", "recompute": True},
        {"cp": 2, "ep": 2, "stage": "warmup", "vit": "replicated"},
        {"cp": 1, "ep": 2, "stage": "sparse", "vit": "balanced"},
    ])


def test_four_processes(tmp_path):
    _run(tmp_path, 4, [
        {"cp": 4, "ep": 1, "stage": "sparse", "vit": "balanced"},
        {"cp": 2, "ep": 2, "stage": "sparse", "vit": "owner"},
        {"cp": 2, "ep": 4, "stage": "dense", "vit": "balanced"},
    ])


def test_deepstack_context_parallel(tmp_path):
    # each rank runs some frame groups and owns other tokens' positions: the DeepStack features
    # must reach the owner with the tokens; the packs in Qwen3-VL's layout (every frame group at
    # its own place in the text, numbered per group), so a group's tokens can straddle ranks
    _run(tmp_path, 2, [{"cp": 2, "ep": 1, "stage": "sparse", "vit": "balanced"}],
         cfg=DEEPSTACK_CFG, group_places=True)


def test_dense_layer_of_a_dsa_model_context_parallel(tmp_path):
    # DSASettings.dense_layers: layer 0 attends densely over the gathered keys while layer 1 runs
    # DSA, in warm-up and in sparse training under activation recomputation
    cfg = replace(CFG, lm=replace(CFG.lm, dsa=replace(CFG.lm.dsa, dense_layers=(0,))))
    _run(tmp_path, 2, [
        {"cp": 2, "ep": 1, "stage": "warmup", "vit": "balanced"},
        {"cp": 2, "ep": 1, "stage": "sparse", "vit": "balanced", "recompute": True},
    ], cfg=cfg)
