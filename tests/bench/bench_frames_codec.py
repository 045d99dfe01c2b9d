"""Benchmark of the frames codec on real decoded frames: stored bytes per video hour and read cost.

Compares the shard format's zstd frames (levels 1, 3, 6, 9, 19; with and without frame delta),
written and read through ``ShardWriter`` / ``ShardReader`` exactly as the pipeline and the
trainer do, against per-frame JPEG (Pillow, quality 95) as the usual lossy alternative.

    python tests/bench/bench_frames_codec.py frames.npy --fps 2
    python tests/bench/bench_frames_codec.py video.mp4 --fps 2 --size 448x448 --max-frames 600

SOURCE is either an .npy of uint8 frames (T, H, W, 3) that were sampled at --fps, or a video
file that is decoded here with decord at --fps (optionally resized to --size HxW).
A "video hour" is 3600 s of source video, i.e. 3600 * fps sampled frames.
"""

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the checkout

from shards.format import FRAMES, index_path_for
from shards.reader import ShardReader
from shards.writer import ShardWriter

WINDOW = 8  # frames per chunk handed to the writer, as the pipeline decodes them


@dataclass
class Result:
    codec: str
    stored_bytes: int
    encode_s: float
    decode_s: float
    psnr_db: float  # inf for lossless


def load_frames(source: Path, fps: float, size: tuple[int, int] | None, max_frames: int | None) -> np.ndarray:
    if source.suffix == ".npy":
        frames = np.load(source, mmap_mode="r")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            sys.exit(f"{source}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if size is not None:
            sys.exit("--size applies to video sources only; resize the .npy beforehand")
        return np.ascontiguousarray(frames[:max_frames])
    import decord

    height, width = size if size is not None else (-1, -1)
    video = decord.VideoReader(str(source), width=width, height=height, num_threads=2)
    step = video.get_avg_fps() / fps
    indices = np.arange(0, len(video), step).astype(np.int64)[:max_frames]
    batches = [video.get_batch(list(indices[i : i + 64])).asnumpy() for i in range(0, len(indices), 64)]
    return np.concatenate(batches)


def time_best(repeat: int, fn) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def bench_zstd(frames: np.ndarray, level: int, delta: bool, workdir: Path, repeat: int) -> Result:
    tar_path = workdir / f"shard-l{level}-d{int(delta)}.tar"

    def write():
        with ShardWriter(tar_path, index_path_for(tar_path), zstd_level=level, frame_delta=delta) as writer:
            chunks = (frames[i : i + WINDOW] for i in range(0, len(frames), WINDOW))
            writer.add("bench", {}, chunks, np.zeros(0, np.int32))
        return writer.entries[0].members[FRAMES].size

    encode_s, stored = time_best(1, write)
    reader = ShardReader(tar_path)
    decode_s, decoded = time_best(repeat, lambda: reader.read_frames("bench"))
    if not np.array_equal(decoded, frames):
        raise AssertionError(f"zstd level {level} delta {delta}: frames do not round-trip")
    reader.close()
    tar_path.unlink()
    index_path_for(tar_path).unlink()
    return Result(f"zstd-{level}{' +delta' if delta else ''}", stored, encode_s, decode_s, float("inf"))


def bench_jpeg(frames: np.ndarray, quality: int, repeat: int) -> Result:
    def encode():
        out = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
            out.append(buffer.getvalue())
        return out

    def decode():
        return np.stack([np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in blobs])

    encode_s, blobs = time_best(1, encode)
    decode_s, decoded = time_best(repeat, decode)
    return Result(f"jpeg-q{quality}", sum(len(b) for b in blobs), encode_s, decode_s, psnr(decoded, frames))


def format_results(results: list[Result], frames: np.ndarray, fps: float) -> str:
    n = len(frames)
    frames_per_hour = fps * 3600
    raw = frames.nbytes
    header = (
        "codec",
        "GB/video-h",
        "ratio",
        "enc ms/frame",
        "dec ms/frame",
        "dec s/video-h",
        "dec MB/s raw",
        "PSNR dB",
    )
    rows = [header]
    rows.append(("raw", f"{raw / n * frames_per_hour / 1e9:.2f}", "1.00", "-", "-", "-", "-", "inf"))
    for r in results:
        rows.append(
            (
                r.codec,
                f"{r.stored_bytes / n * frames_per_hour / 1e9:.2f}",
                f"{raw / r.stored_bytes:.2f}",
                f"{r.encode_s / n * 1e3:.2f}",
                f"{r.decode_s / n * 1e3:.2f}",
                f"{r.decode_s / n * frames_per_hour:.1f}",
                f"{raw / r.decode_s / 1e6:.0f}",
                "inf" if r.psnr_db == float("inf") else f"{r.psnr_db:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source", type=Path, help=".npy of uint8 (T, H, W, 3) frames, or a video file (decord)"
    )
    parser.add_argument("--fps", type=float, default=2.0, help="sampling rate of the frames (default 2)")
    parser.add_argument("--size", type=parse_size, default=None, help="HxW resize when decoding a video")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--levels", default="1,3,6,9,19", help="zstd levels (default 1,3,6,9,19)")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--repeat", type=int, default=3, help="decode timings: best of N (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the temporary shards")
    args = parser.parse_args(argv)

    frames = load_frames(args.source, args.fps, args.size, args.max_frames)
    t, h, w, _ = frames.shape
    print(f"{args.source}: {t} frames of {h}x{w} at {args.fps:g} fps = {t / args.fps / 60:.1f} min of video")
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for level in (int(x) for x in args.levels.split(",")):
            for delta in (False, True):
                results.append(bench_zstd(frames, level, delta, Path(workdir), args.repeat))
                print(f"  done {results[-1].codec}", file=sys.stderr)
    results.append(bench_jpeg(frames, args.jpeg_quality, args.repeat))
    print(format_results(results, frames, args.fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
