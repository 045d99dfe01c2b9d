"""An imported Qwen3-VL-MoE (patch 16) sets the data's geometry: preprocess budgets 32-px merged
tokens for it, and training starts from its weights with a Qwen-style tokenizer (CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.cli import main as longshot
from jobs.steps.import_hf import import_hf
from pipeline.chat_formats import QWEN
from pipeline.sample_videos import sample_clip
from pipeline.text import train_tokenizer
from shards.reader import DatasetReader
from tests.jobs.hf_models import VL_VISION, save_qwen3_vl_moe

pytest.importorskip("transformers")


def test_imported_model_sets_the_budget_and_trains(tmp_path):
    import_hf(save_qwen3_vl_moe(tmp_path / "hf"), tmp_path / "init")
    line = {"id": "bikes", "video": str(sample_clip("bikes.mp4")), "text": "People ride bikes."}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    tok = tmp_path / "tokenizer.json"
    train_tokenizer(["People ride bikes."] * 20, tok, vocab_size=280, fmt=QWEN)
    data, preset = tmp_path / "data", f"from-hf:{tmp_path / 'init'}"
    assert longshot(["preprocess", "--manifest", str(tmp_path / "manifest.jsonl"), "--tokenizer", str(tok),
                     "--chat-format", "qwen", "--preset", preset, "--out", str(data),
                     "--max-seq-tokens", "512", "--fps", "1", "--min-fps", "1", "--max-pixels",
                     str(100 * 100), "--min-pixels", str(64 * 64), "--executor", "inprocess",
                     "--no-progress"]) == 0
    block = VL_VISION["patch_size"] * VL_VISION["spatial_merge_size"]  # 32 px, not longshot's 28
    reader = DatasetReader(data)
    for meta in (reader.shard_for(k).read_meta(k) for k in reader.keys):
        assert meta["height"] % block == 0 and meta["width"] % block == 0
        groups = len(meta["frame_indices"]) // VL_VISION["temporal_patch_size"]
        assert meta["vision_tokens"] == groups * (meta["height"] // block) * (meta["width"] // block)
    assert longshot(["pack", str(data), "--seq-len", "512", "--no-progress"]) == 0
    run = tmp_path / "run"
    assert longshot(["train", "--run", str(run), "--data", str(data), "--packs", str(data / "packs"),
                     "--tokenizer", str(tok), "--chat-format", "qwen", "--preset", preset,
                     "--init-from", str(tmp_path / "init"), "--attention", "dsa", "--dsa-warmup-steps", "1",
                     "--dsa-topk", "16", "--steps", "2", "--workers", "0", "--save-every", "2"]) == 0
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == ["warmup", "sparse"]
    assert all(np.isfinite(m["loss"]) for m in metrics)
