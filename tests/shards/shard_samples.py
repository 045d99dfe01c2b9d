"""Random samples and datasets for the shard tests (fresh data every run; see the ``rng`` fixture)."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.format import index_path_for, shard_name, shard_tar_path
from shards.manifest import ShardSummary, write_manifest
from shards.writer import ShardWriter


@dataclass
class SampleSpec:
    key: str
    meta: dict
    frames: np.ndarray
    text: np.ndarray
    chunk_sizes: list[int] = field(default_factory=list)

    def chunks(self):
        """The frames as the pipeline would hand them over: windows of the given sizes."""
        start = 0
        for n in self.chunk_sizes or [len(self.frames)]:
            yield self.frames[start : start + n]
            start += n
        assert start == len(self.frames)


def random_frames(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """Frames with some temporal coherence (a drifting image plus noise), like decoded video."""
    base = rng.integers(0, 256, (h, w + t, 3), dtype=np.uint8)
    frames = np.stack([base[:, i : i + w] for i in range(t)])
    noise = rng.integers(0, 4, frames.shape, dtype=np.uint8)
    return frames + noise


def random_chunk_sizes(rng: np.random.Generator, t: int, max_chunk: int = 8) -> list[int]:
    """Sizes of windows that add up to t, including some empty windows."""
    sizes = []
    while sum(sizes) < t:
        sizes.append(int(min(rng.integers(0, max_chunk + 1), t - sum(sizes))))
    return sizes


def random_sample(
    rng: np.random.Generator, key: str, *, t: int | None = None, h: int | None = None, w: int | None = None
) -> SampleSpec:
    t = t if t is not None else int(rng.integers(1, 12))
    h = h if h is not None else int(rng.integers(1, 24))
    w = w if w is not None else int(rng.integers(1, 24))
    fps = float(rng.choice([0.5, 1.0, 2.0]))
    meta = {
        "id": f"video-{key}",
        "source": f"/videos/{key}.mp4",
        "sample_fps": fps,
        "duration_s": round(float(rng.uniform(10, 4000)), 3),
        "height": h,
        "width": w,
        "n_frames": t,
        "vision_tokens": int(rng.integers(0, 5000)),
        "caption": "un vídeo — 動画",
    }
    text = rng.integers(0, 150_000, int(rng.integers(0, 40)), dtype=np.int64)
    return SampleSpec(key, meta, random_frames(rng, t, h, w), text, random_chunk_sizes(rng, t))


def write_shard(tar_path: Path, specs: list[SampleSpec], **writer_options) -> ShardSummary:
    with ShardWriter(tar_path, index_path_for(tar_path), **writer_options) as writer:
        for spec in specs:
            writer.add(spec.key, spec.meta, spec.chunks(), spec.text)
    return writer.close()


def write_dataset(dataset_dir: Path, shards: list[list[SampleSpec]], **writer_options) -> list[ShardSummary]:
    """A complete dataset folder: shards/shard-NNNNNN.{tar,parquet} and dataset.parquet."""
    summaries = []
    Path(dataset_dir).mkdir(parents=True, exist_ok=True)
    for number, specs in enumerate(shards):
        tar_path = shard_tar_path(dataset_dir, shard_name(number))
        tar_path.parent.mkdir(parents=True, exist_ok=True)
        summaries.append(write_shard(tar_path, specs, **writer_options))
    write_manifest(dataset_dir, summaries)
    return summaries
