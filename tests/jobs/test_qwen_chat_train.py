"""A tokenizer built the Qwen way (ChatML, vision markers) through preprocess, pack and train on
the CPU; the packed labels are exactly the assistant spans and their closing <|im_end|>."""
from __future__ import annotations

import json

import numpy as np

from jobs.cli import main as longshot
from pipeline.chat_formats import QWEN
from pipeline.sample_videos import sample_clip
from pipeline.text import train_tokenizer
from shards.loader import PackDataset

ANSWERS = ["People ride bikes.", "A rabbit wakes up under a tree."]


def test_qwen_tokenizer_through_preprocess_pack_and_train(tmp_path):
    lines = [
        {"id": "bikes", "video": str(sample_clip("bikes.mp4")), "conversations": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "<video>\nWhat happens?"},
            {"role": "assistant", "content": ANSWERS[0]}]},
        {"id": "bunny", "video": str(sample_clip("bigbuckbunny.mp4")), "text": ANSWERS[1]},
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tok_path = tmp_path / "tokenizer.json"
    tok = train_tokenizer(ANSWERS * 10 + ["What happens? Answer briefly. system user assistant"] * 10,
                          tok_path, vocab_size=350, fmt=QWEN)
    data = tmp_path / "data"
    assert longshot(["preprocess", "--manifest", str(tmp_path / "manifest.jsonl"), "--tokenizer",
                     str(tok_path), "--chat-format", "qwen", "--out", str(data), "--max-seq-tokens", "512",
                     "--fps", "1", "--min-fps", "1", "--max-pixels", str(56 * 56), "--min-pixels",
                     str(56 * 56), "--executor", "inprocess", "--no-progress"]) == 0
    assert longshot(["pack", str(data), "--seq-len", "1024", "--no-progress"]) == 0

    placeholder = tok.token_to_id("<|video_pad|>")
    packs = PackDataset(data / "packs", data, vision_token_id=placeholder)
    spans = []
    for i in range(len(packs)):
        batch = packs[i]
        where = np.flatnonzero(batch.labels.numpy() != -100)
        runs = np.split(where, np.flatnonzero(np.diff(where) != 1) + 1)
        spans += [tok.decode(batch.labels.numpy()[r].tolist(), skip_special_tokens=False) for r in runs]
        assert int((batch.input_ids == placeholder).sum()) > 0  # the video's tokens are in place
    assert sorted(spans) == sorted(a + "<|im_end|>" for a in ANSWERS)

    assert longshot(["train", "--run", str(tmp_path / "run"), "--data", str(data), "--packs",
                     str(data / "packs"), "--tokenizer", str(tok_path), "--chat-format", "qwen",
                     "--steps", "2", "--workers", "0", "--save-every", "2"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)
