"""Which pack each training step reads, and where packs come from.

The data cursor is the step: step s on data-parallel rank r reads global item s*dp + r of an
endless sequence of epochs, each a seeded permutation of the packs. A checkpoint at step s
therefore resumes the data exactly, with no loader state beyond the step and the seed.

Packs come from the pack plan and dataset (shards.loader.PackDataset), or are synthetic: packs
made through the loader's own `assemble` (so the batch contract holds) from seeded random text
and pixels, for tests and benchmarks that need a given sequence length without a dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def pack_order(num_packs: int, seed: int, first_item: int, count: int) -> list[int]:
    """Pack indices of global items first_item .. first_item+count-1."""
    out, perms = [], {}
    for g in range(first_item, first_item + count):
        epoch, i = divmod(g, num_packs)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_packs)
        out.append(int(perms[epoch][i]))
    return out


@dataclass(frozen=True)
class SyntheticSpec:
    packs: int
    seq_len: int  # tokens per pack (approximately: whole documents)
    vocab: int
    vision_token_id: int
    seed: int = 0
    video_fraction: float = 0.75  # share of each document given to vision tokens
    docs_per_pack: int = 2
    grid: tuple[int, int] = (8, 8)  # merged rows x cols of every synthetic video
    # "progression": the answer is an arithmetic progression of ids (learnt from the previous
    # token alone); "recall": random ids, then the same ids again, the loss on the repeat (it
    # needs attention to keys half a document back: what sparse attention must keep).
    text: str = "progression"


def text_id_range(vocab: int, vision_token_id: int) -> tuple[int, int]:
    """[low, high): the ids synthetic text is drawn from. Those above the vision placeholder
    (where longshot's own tokenizers put ordinary tokens), unless fewer than two lie there, as
    when an imported model's placeholder is its last id: then those below it."""
    if vocab - (vision_token_id + 1) >= 2:
        return vision_token_id + 1, vocab
    if vision_token_id >= 2:
        return 0, vision_token_id
    raise ValueError(f"synthetic packs need two or more text ids besides the vision token {vision_token_id} "
                     f"in a vocabulary of {vocab}")


def _synthetic_text(kind: str, rng, n: int, low: int, high: int) -> tuple[np.ndarray, tuple[int, int]]:
    """n token ids in [low, high) and the [start, end) span the loss is taken on."""
    if kind == "progression":
        start = int(rng.integers(low, max(low + 1, high - n)))
        return (np.arange(n) % (high - low) + start - low) % (high - low) + low, (2, n)
    if kind == "recall":
        half = n // 2
        first = rng.integers(low, high, size=half)
        return np.concatenate([first, first, rng.integers(low, high, size=n - 2 * half)]), (half, 2 * half)
    raise ValueError(f"synthetic text {kind!r}: progression or recall")


class SyntheticPacks(Dataset):
    """Item i: a pack of `docs_per_pack` documents, each a video and an answer the model can
    learn (an arithmetic progression of token ids), deterministic in (seed, i)."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec

    def __len__(self) -> int:
        return self.spec.packs

    def __getitem__(self, i: int):
        from shards.batch import Document, assemble

        s = self.spec
        rng = np.random.default_rng([s.seed, int(i)])
        per_doc = s.seq_len // s.docs_per_pack
        rows, cols = s.grid
        groups = max(1, int(per_doc * s.video_fraction) // (rows * cols))
        n_text = max(4, per_doc - groups * rows * cols)
        docs, n_vision = [], 0
        low, high = text_id_range(s.vocab, s.vision_token_id)
        for d in range(s.docs_per_pack):
            text, span = _synthetic_text(s.text, rng, n_text, low, high)
            docs.append(Document(key=f"syn{i}_{d}", text=text.astype(np.int64), vision_at=2,
                                 loss_spans=(span,), grid=(groups, rows, cols),
                                 times=np.arange(groups, dtype=np.float64)))
            n_vision += groups * rows * cols
        patches = torch.from_numpy(rng.integers(0, 256, size=(4 * n_vision, 2 * 14 * 14 * 3),
                                                dtype=np.uint8))
        return assemble(docs, patches, vision_token_id=s.vision_token_id, pack_index=int(i))


class _Ordered(Dataset):
    """Item j: the pack of step steps[j]. A dataset with ``at_step(pack, step, item)`` (e.g. one that
    mixes in retrieval samples) is told the step and the global item too."""

    def __init__(self, packs: Dataset, order: list[int], steps: list[int], items: list[int]):
        self.packs, self.order, self.steps, self.items = packs, order, steps, items

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int):
        at_step = getattr(self.packs, "at_step", None)
        if at_step is not None:
            return at_step(self.order[j], self.steps[j], self.items[j])
        return self.packs[self.order[j]]


def batches(packs: Dataset, seed: int, start_step: int, steps: int, rank: int, world: int,
            workers: int = 0):
    """An iterator over this rank's packs for steps start_step .. steps-1 (prefetched by
    `workers` DataLoader processes)."""
    n = steps - start_step
    items = [s * world + rank for s in range(start_step, steps)]
    order = [pack_order(len(packs), seed, g, 1)[0] for g in items]
    if n <= 0:
        return iter(())
    ordered = _Ordered(packs, order, list(range(start_step, steps)), items)
    return iter(DataLoader(ordered, batch_size=None, shuffle=False,
                           num_workers=workers, persistent_workers=False,
                           prefetch_factor=2 if workers else None))
