"""Packed batches that follow the loader's contract (shards/batch.py), built with the loader's own
`assemble` from random text, random patches and chosen video grids: the structure is real, the
content is noise (or, with `learnable=True`, a pattern the model can fit)."""
from __future__ import annotations

import numpy as np
import torch

from shards.batch import Document, assemble


def make_batch(vocab: int, vision_token_id: int, seed: int = 0,
               docs: tuple[tuple[int, tuple[int, int, int] | None], ...] = ((12, (2, 2, 3)), (9, None), (10, (1, 3, 2))),
               learnable: bool = False, group_places: bool = False):
    """One pack of documents (n_text, merged grid or None); returns a PackedBatch. With
    `group_places` each temporal group of a video sits at its own random place in the text
    (Qwen3-VL's layout) instead of the video as one block."""
    rng = np.random.default_rng(seed)
    documents, n_vision = [], 0
    for d, (n_text, grid) in enumerate(docs):
        if learnable:  # every text continues an arithmetic progression: next token is predictable
            start = int(rng.integers(vision_token_id + 1, vocab - n_text))
            text = np.arange(start, start + n_text, dtype=np.int64)
        else:
            text = rng.integers(vision_token_id + 1, vocab, size=n_text, dtype=np.int64)
        start = vision_at = min(2, n_text)
        times = None
        if grid:
            times = np.arange(grid[0], dtype=np.float64) * 1.5
            n_vision += int(np.prod(grid))
            if group_places:
                vision_at = tuple(sorted(int(x) for x in rng.integers(start, n_text + 1, grid[0])))
        documents.append(Document(key=f"doc{d}", text=text, vision_at=vision_at,
                                  loss_spans=((start, n_text),), grid=grid, times=times))
    patches = torch.from_numpy(rng.integers(0, 256, size=(4 * n_vision, 2 * 14 * 14 * 3), dtype=np.uint8))
    return assemble(documents, patches, vision_token_id=vision_token_id)
