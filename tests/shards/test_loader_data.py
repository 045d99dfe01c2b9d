"""Samples for the loader tests, written as real shards, and an independent reading of the batch contract.

Frames encode where each pixel came from: channel 0 = (frame + marker) % 256, channel 1 = row,
channel 2 = column. So a patch taken from ``pixel_patches`` tells which video, frame and pixels it
holds, and the tests check patch order against the contract without trusting the loader's code.

``expected_document`` rebuilds one document's ids, labels and positions with plain loops, straight
from the wording of the contract in ``shards/batch.py``; the tests compare the loader against it.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shard_samples import SampleSpec, write_dataset

from shards.reader import DatasetReader

VISION_ID = 151_655  # outside the text id range below, so vision tokens are recognisable
TEXT_VOCAB = 50_000
BLOCK = 28


@dataclass
class Spec:
    """A sample as the tests know it (the truth the loader output is checked against)."""

    key: str
    text: np.ndarray
    vision_at: int
    loss_spans: list[tuple[int, int]]
    frames: int = 0  # 0: text only
    rows: int = 0  # merged rows (H / 28)
    cols: int = 0
    timestamps: list[float] | None = None
    marker: int = 0

    @property
    def vision_tokens(self) -> int:
        return self.frames // 2 * self.rows * self.cols

    @property
    def tokens(self) -> int:
        return self.text.size + self.vision_tokens


def coded_frames(frames: int, rows: int, cols: int, marker: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames whose pixels hold (frame + marker, y, x)."""
    h, w = rows * BLOCK, cols * BLOCK
    assert h <= 256 and w <= 256
    out = np.empty((frames, h, w, 3), np.uint8)
    out[..., 0] = ((np.arange(frames) + marker) % 256)[:, None, None]
    out[..., 1] = np.arange(h)[None, :, None]
    out[..., 2] = np.arange(w)[None, None, :]
    return out


def random_spans(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    cuts = np.sort(rng.choice(n + 1, size=min(n + 1, 2 * int(rng.integers(0, 4))), replace=False))
    return [(int(a), int(b)) for a, b in zip(cuts[::2], cuts[1::2])]


def random_spec(
    rng: np.random.Generator,
    key: str,
    marker: int,
    *,
    max_frames: int = 6,
    max_side: int = 3,
    max_text: int = 40,
    video: bool | None = None,
) -> Spec:
    video = bool(rng.random() < 0.75) if video is None else video
    n_text = int(rng.integers(0 if video else 1, max_text + 1))  # a sample has at least one token
    text = rng.integers(0, TEXT_VOCAB, n_text).astype(np.int32)
    spec = Spec(key, text, int(rng.integers(0, n_text + 1)), random_spans(rng, n_text), marker=marker)
    if video:
        spec.frames = 2 * int(rng.integers(1, max_frames // 2 + 1))
        spec.rows, spec.cols = (int(x) for x in rng.integers(1, max_side + 1, 2))
        fps = float(rng.choice([0.25, 0.5, 1.0, 2.0, 3.0]))
        start = float(rng.choice([0.0, rng.uniform(0, 3000)]))
        spec.timestamps = [start + i / fps for i in range(spec.frames)]
    return spec


def to_sample(spec: Spec) -> SampleSpec:
    meta = {
        "vision_tokens": spec.vision_tokens,
        "tokens": spec.tokens,
        "vision_at": spec.vision_at,
        "loss_spans": [list(s) for s in spec.loss_spans],
    }
    if spec.frames:
        frames = coded_frames(spec.frames, spec.rows, spec.cols, spec.marker)
        meta.update(
            height=spec.rows * BLOCK,
            width=spec.cols * BLOCK,
            n_frames=spec.frames,
            timestamps=spec.timestamps,
            sample_fps=1.0,
        )
    else:  # the writer needs one frame; vision_tokens 0 marks the sample text only
        frames = np.zeros((1, 1, 1, 3), np.uint8)
    return SampleSpec(spec.key, meta, frames, spec.text)


def write_specs(dataset_dir: Path, shards: list[list[Spec]]) -> DatasetReader:
    write_dataset(Path(dataset_dir), [[to_sample(s) for s in shard] for shard in shards])
    return DatasetReader(dataset_dir)


def expected_document(spec: Spec, tokens_per_second: float = 2.0):
    """(ids, labels, positions [3, L]) of one document, with loops, from the contract's wording."""
    ids, is_text, in_span = [], [], []
    spans = set()
    for start, end in spec.loss_spans:
        spans.update(range(start, end))
    for i in range(spec.vision_at):
        ids.append(int(spec.text[i])), is_text.append(True), in_span.append(i in spans)
    for _ in range(spec.vision_tokens):
        ids.append(VISION_ID), is_text.append(False), in_span.append(False)
    for i in range(spec.vision_at, spec.text.size):
        ids.append(int(spec.text[i])), is_text.append(True), in_span.append(i in spans)
    labels = [
        ids[i + 1] if i + 1 < len(ids) and is_text[i + 1] and in_span[i + 1] else -100
        for i in range(len(ids))
    ]

    positions = []
    index = 0
    for i in range(spec.vision_at):
        positions.append((index, index, index))
        index += 1
    if spec.vision_tokens:
        base, used = index, index
        for g in range(spec.frames // 2):
            t = base + int(np.floor(spec.timestamps[2 * g] * tokens_per_second + 0.5))
            for r in range(spec.rows):
                for c in range(spec.cols):
                    positions.append((t, base + r, base + c))
                    used = max(used, t, base + r, base + c)
        index = used + 1
    for i in range(spec.vision_at, spec.text.size):
        positions.append((index, index, index))
        index += 1
    return np.array(ids, np.int64), np.array(labels, np.int64), np.array(positions, np.int64).reshape(-1, 3).T


def decode_patch(patch: np.ndarray) -> np.ndarray:
    """(2, 14, 14, 3) view of one flattened patch: per pixel (frame + marker, y, x)."""
    return patch.reshape(2, 14, 14, 3)


def test_coded_frames_hold_their_coordinates():
    frames = coded_frames(4, 2, 3, marker=250)
    assert frames.shape == (4, 56, 84, 3)
    assert frames[3, 55, 83].tolist() == [(3 + 250) % 256, 55, 83]


def test_expected_document_follows_the_contract_on_a_hand_example():
    # 2 text, video of 2 groups (t=0 s and 1.5 s) of 1x2 merged tokens, 1 text; loss on text 1 and 2.
    spec = Spec(
        "k",
        np.array([5, 6, 7], np.int32),
        vision_at=2,
        loss_spans=[(1, 3)],
        frames=4,
        rows=1,
        cols=2,
        timestamps=[0.0, 0.5, 1.5, 2.0],
    )
    ids, labels, positions = expected_document(spec)
    v = VISION_ID
    assert ids.tolist() == [5, 6, v, v, v, v, 7]
    assert labels.tolist() == [6, -100, -100, -100, -100, 7, -100]
    # base 2; t = 2 + round(0 * 2) = 2 and 2 + round(1.5 * 2) = 5; rows 2; cols 2, 3; text resumes at 6.
    assert positions.T.tolist() == [
        [0, 0, 0],
        [1, 1, 1],
        [2, 2, 2],
        [2, 2, 3],
        [5, 2, 2],
        [5, 2, 3],
        [6, 6, 6],
    ]
