"""`longshot preprocess --frame-codec jpeg` on real clips: JPEG shards, their PSNR against the
source frames decoded again by the pipeline, and codec settings that cannot work refused up front."""
from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest

from jobs.cli import main as longshot
from jobs.steps.encode import EncodeConfig
from pipeline.decode import iter_frame_windows
from pipeline.sample_videos import sample_clip
from pipeline.text import train_tokenizer
from shards.reader import DatasetReader
from shards.stats import compute_stats
from shards.verify import verify_dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_corpus")
    lines = [{"id": "bunny", "video": str(sample_clip("bigbuckbunny.mp4")), "text": "a rabbit"},
             {"id": "car", "video": str(sample_clip("carphone_pristine.mp4")), "text": "a car ride"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    train_tokenizer(["a rabbit in a meadow", "a car ride"] * 20, root / "tokenizer.json", vocab_size=200)
    return root


def _args(corpus, out, *extra: str) -> list[str]:
    return ["preprocess", "--manifest", str(corpus / "manifest.jsonl"), "--tokenizer",
            str(corpus / "tokenizer.json"), "--out", str(out), "--max-seq-tokens", "4096", "--fps", "2",
            "--max-pixels", str(112 * 168), "--min-pixels", str(56 * 56), "--executor", "inprocess",
            "--no-progress", *extra]


def test_jpeg_dataset_psnr_is_that_of_the_source_frames(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    assert longshot(_args(corpus, out, "--frame-codec", "jpeg", "--jpeg-quality", "92")) == 0
    printed = capsys.readouterr().out
    assert "jpeg PSNR dB vs source" in printed and "jpeg frames bytes per video hour" in printed
    assert verify_dataset(out, decode=True).ok
    reader = DatasetReader(out)
    assert sorted(reader.keys) == ["bunny", "car"] and set(reader.index["frames_codec"].to_pylist()) == {"jpeg"}
    errors = []
    for key in reader.keys:
        shard = reader.shard_for(key)
        meta = shard.read_meta(key)
        assert meta["frames"]["quality"] == 92
        # the source frames again, straight from the video, and FFmpeg's decode of the stored JPEGs
        source = np.concatenate(list(iter_frame_windows(meta["video"], meta["frame_indices"],
                                                        meta["height"], meta["width"])))
        member = shard.read_member(key, "frames")
        with av.open(io.BytesIO(member), format="mjpeg") as container:
            stored = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert stored.shape == source.shape
        sampled = np.arange(0, len(source), 8)
        errors.append(np.mean((stored[sampled].astype(np.float64) - source[sampled]) ** 2))
        assert 10 * np.log10(255**2 / np.mean((stored.astype(float) - source) ** 2)) > 35
    psnr = compute_stats(out).value("frame codecs", "jpeg PSNR dB vs source")
    # pooled over sampled frames (the samples have their own frame counts: weight by them)
    assert psnr == pytest.approx(10 * np.log10(255**2 / np.average(errors, weights=[
        len(range(0, reader.shard_for(k).frames_info(k).shape[0], 8)) for k in reader.keys])), abs=0.1)


def test_codec_settings_that_cannot_work_are_refused_before_any_work(corpus, tmp_path, capsys):
    out = tmp_path / "refused"
    assert longshot(_args(corpus, out, "--frame-codec", "jpeg", "--frame-delta")) == 2
    assert "frame delta is a zstd option" in capsys.readouterr().err
    assert longshot(_args(corpus, out, "--frame-codec", "jpeg", "--jpeg-quality", "101")) == 2
    assert "JPEG quality must be an int in [1, 100], got 101" in capsys.readouterr().err
    assert not out.exists()


def test_the_zstd_default_keeps_the_config_hash_of_datasets_made_before_codecs():
    """A dataset encoded before frame codecs existed resumes: its job config has no codec fields."""
    config = EncodeConfig().job_config()
    assert "frame_codec" not in config and "jpeg_quality" not in config
    assert EncodeConfig(frame_codec="jpeg").job_config()["frame_codec"] == "jpeg"


def test_training_with_jpeg_decoded_on_the_device_matches_the_workers(corpus, tmp_path, monkeypatch):
    """`longshot train --jpeg-on-device`: JPEG frames cross the loader process compressed and are
    decoded by the batch's move to the trainer's device (here the CPU, Pillow; nvJPEG on a GPU):
    the same losses as frames decoded in the loader worker."""
    data = tmp_path / "ds"
    assert longshot(_args(corpus, data, "--frame-codec", "jpeg")) == 0
    assert longshot(["pack", str(data), "--seq-len", "2048", "--no-progress"]) == 0
    from shards import gpu_jpeg

    decoded_here = []  # frames decoded by the move to the device (the real decoder, counted)
    real_decode = gpu_jpeg.decode_frames
    monkeypatch.setattr(gpu_jpeg, "decode_frames",
                        lambda frames, *a, **k: decoded_here.append(len(frames)) or real_decode(frames, *a, **k))
    losses = {}
    for name, extra in (("workers", []), ("device", ["--jpeg-on-device"])):
        run = tmp_path / name
        assert longshot(["train", "--run", str(run), "--data", str(data), "--packs", str(data / "packs"),
                         "--tokenizer", str(corpus / "tokenizer.json"), "--steps", "3", "--save-every", "3",
                         "--workers", "1", *extra]) == 0
        losses[name] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        if name == "workers":
            assert not decoded_here
    assert sum(decoded_here) > 0, "--jpeg-on-device decoded no frame at the move to the device"
    assert len(losses["workers"]) == 3
    assert losses["device"] == losses["workers"]
