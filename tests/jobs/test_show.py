"""`longshot preprocess` on non-MP4 containers, then `longshot show`: the stored frames are FFmpeg's
frames at the stored indices, the stored timestamps its presentation times, and the contact sheet
shows them with the trained span marked."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jobs.cli import main as longshot
from pipeline.sample_containers import make_variants
from pipeline.text import train_tokenizer
from shards.reader import DatasetReader
from tests.pipeline.ffmpeg_reference import ffmpeg_decode


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    videos = make_variants(root / "videos", ["h264_bframes.ts", "mpeg1.mpg", "h264_vfr.mkv"])
    lines = [{"id": "ts", "video": str(videos["h264_bframes.ts"]), "conversations": [
                 {"role": "user", "content": "<video>\nWhat happens?"},
                 {"role": "assistant", "content": "People ride bikes."}]},
             {"id": "mpg", "video": str(videos["mpeg1.mpg"]), "text": "bikes on a street"},
             {"id": "vfr", "video": str(videos["h264_vfr.mkv"]), "text": "bikes, unevenly timed"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    train_tokenizer(["people ride bikes on a street", "what happens?"] * 20, root / "tok.json", vocab_size=300)
    out = root / "data"
    assert longshot(["preprocess", "--manifest", str(root / "manifest.jsonl"), "--tokenizer", str(root / "tok.json"),
                     "--out", str(out), "--fps", "2", "--max-pixels", str(112 * 224), "--no-progress",
                     "--executor", "inprocess"]) == 0
    return out, root / "tok.json"


@pytest.mark.parametrize("key", ["ts", "mpg", "vfr"])
def test_stored_frames_and_times_are_ffmpegs(dataset, key):
    out, _ = dataset
    sample = DatasetReader(out).read(key)
    meta = sample.meta
    ref = ffmpeg_decode(meta["video"], meta["frame_indices"], meta["height"], meta["width"])
    assert np.array_equal(sample.frames, ref.frames)
    assert np.allclose(meta["timestamps"], ref.times, atol=1e-3)


def test_show_writes_a_labelled_contact_sheet(dataset, tmp_path, capsys):
    out, tokenizer = dataset
    png = tmp_path / "ts.png"
    assert longshot(["show", str(out), "ts", "--tokenizer", str(tokenizer), "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "[[" in printed and "People ride bikes." in printed.split("[[", 1)[1].split("]]", 1)[0]
    image = np.asarray(Image.open(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert longshot(["show", str(out), "no_such_key"]) == 2
