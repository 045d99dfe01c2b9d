"""Retrieval samples mixed into training (`longshot train --retrieval-fraction F`).

A share F of the steps reads a pack of retrieval documents instead of the plan's real pack: each
document is a haystack of the dataset's own real clips and texts with a needle (a 6-digit code
tied to a name) at a random depth, the question at the end, and the loss on the answer and its
turn end (model/retrieval/). A retrieval pack holds pack_tokens // L documents of L tokens
(pack_tokens: the plan's sequence length, so a step reads as many tokens either way), and L
grows over the run: it doubles from min_len to max_len in equal spans of steps (short documents first: the model learns to retrieve where it
is cheap, then to do it far away).

Which steps retrieve, the needles, depths and haystacks depend only on (seed, step, item), so a
resumed run reads exactly the packs it would have read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset


@dataclass(frozen=True)
class RetrievalSpec:
    fraction: float  # share of steps that read a retrieval pack
    min_len: int  # document length at the first step
    max_len: int  # document length at the end
    pack_tokens: int  # tokens of a retrieval pack (whole documents)
    tokenizer: str
    chat_format: dict  # pipeline.chat_formats.ChatFormat fields
    steps: int  # the run's steps: the length schedule spans them
    seed: int

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"retrieval fraction must be within (0, 1], got {self.fraction}")
        if not 0 < self.min_len <= self.max_len <= self.pack_tokens:
            raise ValueError(f"retrieval lengths must satisfy 0 < min_len <= max_len <= pack_tokens, got "
                             f"{self.min_len}, {self.max_len}, {self.pack_tokens}")

    def length_at(self, step: int) -> int:
        """min_len x 2^stage, the stages splitting the run evenly; max_len in the last one."""
        stages = (self.max_len // self.min_len).bit_length()  # floor(log2(max / min)) + 1
        stage = min(stages - 1, step * stages // max(1, self.steps))
        return self.max_len if stage == stages - 1 else self.min_len << stage


class RetrievalMix(Dataset):
    """The real packs; `at_step` swaps in a retrieval pack on the steps the spec picks."""

    def __init__(self, real: Dataset, spec: RetrievalSpec, dataset_dir, vision_token_id: int, geometry):
        self.real, self.spec = real, spec
        self.dataset_dir, self.vision_token_id, self.geometry = str(dataset_dir), vision_token_id, geometry
        self._samples = None  # opened in the process that reads (DataLoader workers)

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, pack: int):
        return self.real[pack]

    def at_step(self, pack: int, step: int, item: int):
        rng = np.random.default_rng([self.spec.seed, item, 0x5E7])
        if rng.random() >= self.spec.fraction:
            return self.real[pack]
        return self.retrieval_pack(rng, self.spec.length_at(step), pack)

    def retrieval_pack(self, rng: np.random.Generator, length: int, pack_index: int):
        from model.retrieval.haystack import needle_document, retrieval_batch
        from model.retrieval.needles import make_needle

        samples = self.samples()
        docs = [needle_document(samples, make_needle(rng), float(rng.random()), length, rng)
                for _ in range(self.spec.pack_tokens // length)]
        return retrieval_batch(docs, vision_token_id=self.vision_token_id, geometry=self.geometry,
                               pack_index=pack_index)

    def samples(self):
        if self._samples is None:
            from tokenizers import Tokenizer

            from model.retrieval.haystack import RealSamples
            from pipeline.chat_formats import ChatFormat

            fmt = ChatFormat(**{**self.spec.chat_format, "extra_special": tuple(self.spec.chat_format["extra_special"])})
            self._samples = RealSamples(self.dataset_dir, Tokenizer.from_file(self.spec.tokenizer), fmt, self.geometry)
        return self._samples

    def __getstate__(self):  # workers open their own readers
        return {**self.__dict__, "_samples": None}
