"""Qwen3-VL's video layout through longshot's data path, against transformers' own logic.

A clip is preprocessed for an imported tiny Qwen3-VL-MoE with the `qwen` chat format, packed and
read by the loader. transformers builds the same input its own way: Qwen3VLProcessor expands the
video placeholder of the prompt into per-group `<t seconds>` text and markers from the stored
frame indices and source fps, its tokenizer encodes the prompt, and the model's get_rope_index
numbers the positions. The pack must hold exactly those ids and positions, and the imported
model's logits on the pack must be transformers' forward on the same input (fp32).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from jobs.cli import main as longshot
from jobs.steps.import_hf import import_hf
from pipeline.chat_formats import QWEN
from pipeline.sample_videos import sample_clip
from pipeline.text import train_tokenizer
from shards.load_patches import PatchGeometry
from shards.loader import PackDataset
from shards.reader import DatasetReader
from tests.jobs.hf_models import VL_VISION, hf_pixels, imported_model, save_qwen3_vl_moe

pytest.importorskip("transformers")

QUESTION, ANSWER = "What happens?", "People ride bikes."
# The prompt as Qwen's processor receives it: ChatML, the video a bare <|video_pad|> that the
# processor replaces by the whole per-group layout (Qwen's chat template writes it between
# <|vision_start|> and <|vision_end|>, which Qwen's processor replaces as a whole).
PROMPT = (f"<|im_start|>user\n<|video_pad|>\n{QUESTION}<|im_end|>\n"
          f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n")


def _processor(tokenizer_file, monkeypatch):
    """transformers' Qwen3VLProcessor on our tokenizer. Its image and video processors need
    torchvision, which this environment lacks; only their geometry is read on the text side,
    so a plain namespace stands in for them (the type check is what has to be bypassed)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    geometry = SimpleNamespace(merge_size=VL_VISION["spatial_merge_size"],
                               temporal_patch_size=VL_VISION["temporal_patch_size"])
    return Qwen3VLProcessor(image_processor=SimpleNamespace(), video_processor=geometry,
                            tokenizer=PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file)))


def _preprocess_and_pack(tmp_path, tok, preset: str):
    line = {"id": "bikes", "video": str(sample_clip("bikes.mp4")), "conversations": [
        {"role": "user", "content": f"<video>\n{QUESTION}"}, {"role": "assistant", "content": ANSWER}]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    data = tmp_path / "data"
    assert longshot(["preprocess", "--manifest", str(tmp_path / "manifest.jsonl"), "--tokenizer", str(tok),
                     "--chat-format", "qwen", "--preset", preset, "--out", str(data),
                     "--max-seq-tokens", "512", "--fps", "1", "--min-fps", "1", "--max-pixels",
                     str(100 * 100), "--min-pixels", str(64 * 64), "--executor", "inprocess",
                     "--no-progress"]) == 0
    assert longshot(["pack", str(data), "--seq-len", "512", "--no-progress"]) == 0
    return data


def test_loader_pack_is_what_transformers_builds_and_logits_match(tmp_path, monkeypatch, capsys):
    from transformers import Qwen3VLMoeForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    tok_file = tmp_path / "tokenizer.json"
    tok = train_tokenizer([QUESTION, ANSWER, "0.5 1.0 2.5 10.0 seconds <>"] * 20, tok_file, vocab_size=280,
                          fmt=QWEN)
    ids = {name: tok.token_to_id(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    src = save_qwen3_vl_moe(tmp_path / "hf", **ids)
    import_hf(src, tmp_path / "init")
    data = _preprocess_and_pack(tmp_path, tok_file, f"from-hf:{tmp_path / 'init'}")

    geometry = PatchGeometry(VL_VISION["patch_size"], VL_VISION["temporal_patch_size"],
                             VL_VISION["spatial_merge_size"])
    batch = PackDataset(data / "packs", data, vision_token_id=ids["video_token_id"], geometry=geometry)[0]
    assert batch.doc_keys == ["bikes"]
    meta = DatasetReader(data).shard_for("bikes").read_meta("bikes")
    groups = len(meta["frame_indices"]) // VL_VISION["temporal_patch_size"]
    grid = torch.tensor([[groups, meta["height"] // geometry.patch, meta["width"] // geometry.patch]])
    assert groups >= 4 and torch.equal(batch.video_grid_thw.long(), grid)

    processor = _processor(tok_file, monkeypatch)
    metadata = VideoMetadata(total_num_frames=len(meta["frame_indices"]), fps=meta["src_fps"],
                             frames_indices=list(meta["frame_indices"]))
    video_text = processor.replace_video_token({"video_grid_thw": grid, "video_metadata": [metadata]}, 0)
    text, _ = processor.get_text_with_replacements([PROMPT], videos_replacements=[video_text])
    their_ids = torch.tensor(processor.tokenizer(text)["input_ids"])
    types = torch.tensor(processor.create_mm_token_type_ids(their_ids.tolist()))
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    positions, _ = model.model.get_rope_index(their_ids, types, video_grid_thw=grid)

    # the layout: per group its time, markers and placeholders, exactly where transformers puts them
    assert text[0].count("<|vision_start|>") == groups and " seconds>" in text[0]
    assert torch.equal(batch.input_ids, their_ids[0]), tok.decode(batch.input_ids.tolist(), skip_special_tokens=False)
    assert torch.equal(batch.position_ids, positions[:, 0])
    # the loss: the answer and its turn end, nothing of the video's text
    labeled = batch.labels[batch.labels != -100].tolist()
    assert tok.decode(labeled, skip_special_tokens=False) == ANSWER + "<|im_end|>"

    with torch.no_grad():
        theirs = model(input_ids=their_ids, pixel_values_videos=hf_pixels(batch.pixel_patches),
                       video_grid_thw=grid, mm_token_type_ids=types).logits[0]
        ours = imported_model(tmp_path / "init").logits(batch)
    scale, err = theirs.abs().max(), (ours - theirs).abs().max()
    assert err <= 1e-4 * scale, f"max abs error {err:.3g} vs logits scale {scale:.3g}"

    # a model trained with another layout (the tiny preset's one block) is refused on this data
    assert longshot(["train", "--run", str(tmp_path / "run"), "--data", str(data), "--packs", str(data / "packs"),
                     "--tokenizer", str(tok_file), "--chat-format", "qwen", "--steps", "1"]) == 2
    assert "'timestamped-groups'" in capsys.readouterr().err
    # a layout longshot does not know (a hand-edited import) is a usage error naming it
    model_file = tmp_path / "init" / "longshot_model.json"
    model_file.write_text(model_file.read_text().replace('"timestamped-groups"', '"upside-down"'))
    assert longshot(["preprocess", "--manifest", str(tmp_path / "manifest.jsonl"), "--tokenizer", str(tok_file),
                     "--preset", f"from-hf:{tmp_path / 'init'}", "--out", str(tmp_path / "again"),
                     "--executor", "inprocess", "--no-progress"]) == 2
    assert "video layout 'upside-down'" in capsys.readouterr().err
