"""A damaged input through `longshot preprocess`: one console line naming it, FFmpeg's lines in
the job's log, none of them on the console."""
from __future__ import annotations

import json

from jobs.cli import main as longshot
from pipeline.sample_containers import make_variants
from pipeline.text import train_tokenizer


def test_damaged_input_gives_one_summary_line_and_a_log(tmp_path, capfd):
    video = make_variants(tmp_path / "videos", ["h264_no_bframes.mkv"])["h264_no_bframes.mkv"]
    data = bytearray(video.read_bytes())
    for k in range(3, 8):  # zero a few stretches of the media data
        at = len(data) * k // 10
        data[at : at + 400] = bytes(400)
    damaged = tmp_path / "corrupt_middle.mkv"
    damaged.write_bytes(data)
    clean = tmp_path / "clean.mkv"
    clean.write_bytes(video.read_bytes())
    lines = [{"id": "bad", "video": str(damaged), "text": "bikes"}, {"id": "good", "video": str(clean), "text": "bikes"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    train_tokenizer(["bikes on a street"] * 20, tmp_path / "tok.json", vocab_size=200)
    out = tmp_path / "data"
    assert longshot(["preprocess", "--manifest", str(tmp_path / "m.jsonl"), "--tokenizer", str(tmp_path / "tok.json"),
                     "--out", str(out), "--fps", "25", "--max-pixels", str(112 * 56),
                     "--min-pixels", str(56 * 56), "--no-progress",
                     "--executor", "inprocess"]) == 0
    console = "".join(capfd.readouterr())
    named = [line for line in console.splitlines() if "corrupt_middle.mkv:" in line]
    assert len(named) == 1 and "concealed" in named[0], console
    assert "clean.mkv:" not in console
    assert "error while decoding" not in console
    logs = list((out / "logs").glob("*.decode.log"))
    assert logs and "error while decoding" in "".join(p.read_text() for p in logs)
