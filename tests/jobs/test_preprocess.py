"""`longshot preprocess` end to end on real videos: bad inputs, shards, and kill/resume."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from jobs.cli import main as longshot
from pipeline.sample_videos import make_bad_inputs, remux_loop, sample_clip
from pipeline.text import train_tokenizer
from shards.reader import DatasetReader
from shards.verify import verify_dataset
from tests.jobs.helpers import output_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest of real clips (one remuxed to 2 minutes) plus every kind of bad input."""
    root = tmp_path_factory.mktemp("corpus")
    videos = root / "videos"
    videos.mkdir()
    remux_loop(sample_clip("bikes.mp4"), videos / "bikes_2min.mp4", 120)
    bad = make_bad_inputs(root / "bad")
    lines = [
        {"id": "bunny", "video": str(sample_clip("bigbuckbunny.mp4")), "text": "a rabbit"},
        {"id": "bikes", "video": "videos/bikes_2min.mp4", "conversations": [
            {"role": "user", "content": "<video>\nWhat happens?"},
            {"role": "assistant", "content": "People ride bikes."}]},
        {"id": "car", "video": str(sample_clip("carphone_pristine.mp4")), "text": "a car ride"},
    ]
    for name, path in sorted(bad.items()):
        if name != "unreadable":  # root reads mode-000 files; covered in tests/pipeline
            lines.append({"id": f"bad_{name}", "video": str(path), "text": "x"})
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    raw += b'{"id": "broken json"\n'
    raw += b'{"id": "bad_utf8", "video": "v.mp4", "text": "\xff\xfe"}\n'
    raw += json.dumps({"id": "bunny", "video": "x.mp4", "text": "dup"}).encode() + b"\n"
    raw += json.dumps({"id": "../escape", "video": "x.mp4", "text": "unsafe"}).encode() + b"\n"
    (root / "manifest.jsonl").write_bytes(raw)
    train_tokenizer(["a rabbit in a meadow", "people ride bikes on a street", "a car ride"] * 20,
                    root / "tokenizer.json", vocab_size=300)
    return root


def _args(corpus: Path, out: Path) -> list[str]:
    # A small budget keeps the test fast and makes the 2-minute video split into segments.
    return ["preprocess", "--manifest", str(corpus / "manifest.jsonl"),
            "--tokenizer", str(corpus / "tokenizer.json"), "--out", str(out),
            "--max-seq-tokens", "1024", "--fps", "2", "--min-fps", "2",
            "--max-pixels", str(112 * 112), "--min-pixels", str(112 * 112), "--shard-mb", "1",
            "--no-progress"]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert longshot(_args(corpus, out) + ["--executor", "inprocess"]) == 0
    return out


def test_every_bad_input_has_one_error_row_and_good_ones_are_ingested(reference):
    errors = pq.read_table(reference / "errors.parquet").to_pylist()
    by_input = {}
    for row in errors:
        by_input.setdefault(row["id"] or row["input"], []).append(row)
    for name in ["missing", "empty", "text_as_mp4", "truncated", "truncated_faststart",
                 "audio_only", "single_frame", "extreme_aspect"]:
        rows = by_input.get(f"bad_{name}")
        assert rows and len(rows) == 1, f"bad_{name}: {rows}"
        assert rows[0]["reason"] and rows[0]["input"].endswith(f"{name}.mp4")
    stages = {(r["stage"], r["reason"]) for r in errors if r["stage"] == "manifest"}
    reasons = " ".join(r for _, r in stages)
    assert "malformed JSON" in reasons and "invalid UTF-8" in reasons
    assert "duplicate id" in reasons and "unsafe id" in reasons

    keys = DatasetReader(reference).keys
    assert "bunny" in keys and "car" in keys
    assert sum(k.startswith("bikes__s") for k in keys) >= 2, "the long video must be split"
    assert not any(k.startswith("bad_") for k in keys)


def test_shards_are_plain_tars_read_by_tar_and_webdataset(reference):
    reader = DatasetReader(reference)
    tars = sorted((reference / "shards").glob("*.tar"))
    listed = subprocess.run(["tar", "-tf", str(tars[0])], capture_output=True, text=True, check=True)
    assert any(name.endswith(".frames.zst") for name in listed.stdout.split())
    seen = set()
    for sample in wds.WebDataset([str(t) for t in tars], shardshuffle=False):
        assert {"json", "frames.zst", "text.npy"} <= set(sample)
        seen.add(sample["__key__"])
    assert seen == set(reader.keys)
    assert verify_dataset(reference).ok


def test_segments_carry_contiguous_timestamps(reference):
    reader = DatasetReader(reference)
    segs = sorted(k for k in reader.keys if k.startswith("bikes__s"))
    metas = [reader.read(k).meta for k in segs]
    for before, after in zip(metas, metas[1:]):
        assert after["segment"]["t_start"] == pytest.approx(before["segment"]["t_end"])
        assert min(after["timestamps"]) >= max(before["timestamps"])
    assert metas[-1]["segment"]["t_end"] == pytest.approx(120, abs=10.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_encode_resumes_to_byte_identical_shards(corpus, reference, tmp_path, seed):
    rng = random.Random(seed + time.time())
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jobs.cli", *_args(corpus, out), "--executor", "inprocess"]
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    produced = {k: v for k, v in output_files(out).items() if not k.startswith("stats")}
    expected = {k: v for k, v in output_files(reference).items() if not k.startswith("stats")}
    assert produced.keys() == expected.keys()
    assert produced == expected
