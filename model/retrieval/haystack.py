"""Long documents of real video and text with a needle at a chosen depth, as a PackedBatch.

The haystack is made of a dataset's real samples (shards written by preprocess): each sample
gives clips of its video (whole temporal groups, about ``clip_tokens`` tokens each, so that a
needle can sit at any depth to within one clip; each clip's times start at 0) and then its text (the content
of its turns, tokenized again without the chat template's tokens). Samples come in a seeded
order and are cycled when a long haystack needs more of them than the dataset has.

One retrieval document, in the chat format of the tokenizer:

    <user turn opens> [haystack: clips, texts ... the needle's fact ... clips, texts] question
    <turn ends, assistant turn opens> answer <turn ends>

It is exactly ``length`` tokens long; the fact starts after round(depth x haystack tokens) of
haystack. Text pieces are cut to fill the haystack exactly (a clip is never cut below a group).
Several documents can share a pack (training): each is one document of the pack (its own
cu_seqlens segment and positions from 0), whatever number of clips it holds.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.retrieval.needles import Needle, NeedleTokens, needle_tokens
from shards.batch import IGNORE_INDEX, Document, PackedBatch, assemble
from shards.errors import CorruptShard
from shards.load_patches import PatchGeometry, write_patches
from shards.positions import group_times
from shards.reader import DatasetReader

VIDEO_MARKER = "<video>"  # pipeline/turns.py's marker; cut from the haystack's text


@dataclass(frozen=True)
class Part:
    """A run of tokens of one document: text ids, or a video clip between its markers."""

    doc: Document
    patches: np.ndarray | None = None  # [groups * rows * cols * merge^2, patch_bytes] uint8 for a clip

    @property
    def length(self) -> int:
        return self.doc.length


def text_part(ids: np.ndarray, key: str) -> Part:
    return Part(Document(key=key, text=np.asarray(ids, np.int64), vision_at=0, loss_spans=()))


class RealSamples:
    """Clips and texts of a dataset's samples, an endless stream in a seeded order."""

    def __init__(self, dataset_dir, tokenizer, fmt, geometry: PatchGeometry):
        self.reader = DatasetReader(dataset_dir)
        if not len(self.reader):
            raise ValueError(f"{dataset_dir}: the dataset has no samples to make a haystack of")
        self.tokenizer, self.fmt, self.geometry = tokenizer, fmt, geometry
        self.vision_open, self.vision_close = self.encode(fmt.vision_open), self.encode(fmt.vision_close)

    def encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []
        return np.asarray(ids, np.int64)

    def stream(self, rng: np.random.Generator, clip_tokens: int) -> Iterator[Part]:
        keys = self.reader.keys
        while True:
            texts = 0
            for i in rng.permutation(len(keys)):
                yield from self.clips(keys[i], clip_tokens)
                text = self.text(keys[i])
                if text.size:
                    texts += 1
                    yield text_part(text, keys[i])
            if not texts:
                raise ValueError(f"{self.reader.dataset_dir}: no sample has text; a haystack needs some")

    def text(self, key: str) -> np.ndarray:
        """The content of the sample's turns, tokenized without the chat template."""
        meta = self.reader.read_meta(key)
        turns = meta.get("turns")
        if not isinstance(turns, list):
            raise CorruptShard(f"{self.reader.shard_for(key).tar_path}: sample {key!r} has no 'turns' in its metadata")
        return self.encode("\n".join(str(t.get("content", "")).replace(VIDEO_MARKER, "").strip() for t in turns).strip())

    def clips(self, key: str, clip_tokens: int) -> Iterator[Part]:
        """The sample's video in clips of whole groups, at most clip_tokens tokens (one group at least)."""
        shard = self.reader.shard_for(key)
        meta = shard.read_meta(key)
        if not int(meta.get("vision_tokens", 0)):
            return
        g = self.geometry
        frames, height, width, _ = shard.frames_info(key).shape
        _, rows, cols = g.grid(frames - frames % g.temporal_patch, height, width)
        times = group_times(meta["timestamps"][: frames - frames % g.temporal_patch], g.temporal_patch)
        first, clip_groups = 0, max(1, clip_tokens // (rows * cols))
        for chunk in shard.iter_frame_chunks(key, chunk_frames=clip_groups * g.temporal_patch):
            groups = chunk.shape[0] // g.temporal_patch
            if not groups:
                break
            patches = np.empty((groups * rows * cols * g.patches_per_token, g.patch_bytes), np.uint8)
            write_patches(chunk[: groups * g.temporal_patch], patches, g)
            clip_times = times[first:first + groups] - times[first]
            doc = Document(key=key, text=np.concatenate([self.vision_open, self.vision_close]),
                           vision_at=self.vision_open.size, loss_spans=(), grid=(groups, rows, cols),
                           times=clip_times)
            yield Part(doc, patches)
            first += groups


def cut_clip(part: Part, groups: int, geometry: PatchGeometry) -> Part:
    """The first ``groups`` groups of a clip."""
    _, rows, cols = part.doc.grid
    n = groups * rows * cols * geometry.patches_per_token
    doc = Document(key=part.doc.key, text=part.doc.text, vision_at=part.doc.vision_at, loss_spans=(),
                   grid=(groups, rows, cols), times=part.doc.times[:groups])
    return Part(doc, part.patches[:n])


def take(stream: Iterator[Part], n: int, geometry: PatchGeometry) -> list[Part]:
    """Parts of ``stream`` holding exactly ``n`` tokens: clips cut to the groups that fit (skipped
    when none does), text cut to the tokens that are left."""
    out, have, skipped = [], 0, 0
    while have < n:
        part = next(stream)
        left = n - have
        if part.doc.grid is None:
            ids = part.doc.text[:left]
            out.append(text_part(ids, part.doc.key))
            have += ids.size
            continue
        groups, rows, cols = part.doc.grid
        fit = min(groups, (left - part.doc.text.size) // (rows * cols))
        if fit < 1:
            skipped += 1
            if skipped > 100_000:
                raise ValueError(f"cannot fill {left} haystack tokens: no text comes between the clips")
            continue
        part = part if fit == groups else cut_clip(part, fit, geometry)
        out.append(part)
        have += part.length
    return out


@dataclass(frozen=True)
class RetrievalDocument:
    """The parts of one document and where its fact and answer are (token offsets in it)."""

    parts: list[Part]
    fact_at: int
    answer_at: int
    answer_len: int
    trained_len: int  # answer and the turn end: the span training takes its loss on

    @property
    def length(self) -> int:
        return sum(p.length for p in self.parts)


def retrieval_document(tokens: NeedleTokens, depth: float, length: int, stream: Iterator[Part],
                       geometry: PatchGeometry, key: str = "needle") -> RetrievalDocument:
    """One document of exactly ``length`` tokens with the needle's fact at ``depth`` (0..1) of its haystack."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    hay = length - tokens.fixed_tokens
    if hay < 0:
        raise ValueError(f"length {length} is shorter than the needle, question and answer ({tokens.fixed_tokens} tokens)")
    before = round(depth * hay)
    head = [text_part(tokens.open_turn, key), *take(stream, before, geometry)]
    tail = [*take(stream, hay - before, geometry), text_part(tokens.ask, key),
            text_part(tokens.answer, key), text_part(tokens.close, key)]
    parts = [p for p in [*head, text_part(tokens.fact, key), *tail] if p.length]
    fact_at = tokens.open_turn.size + before
    answer_at = length - tokens.close.size - tokens.answer.size
    return RetrievalDocument(parts, fact_at, answer_at, tokens.answer.size, tokens.answer.size + tokens.close.size)


def needle_document(samples: RealSamples, needle: Needle, depth: float, length: int,
                    rng: np.random.Generator, clip_tokens: int | None = None) -> RetrievalDocument:
    """A document of ``length`` tokens around ``needle``, its haystack drawn from ``samples`` with
    ``rng``; clips of about 1% of the length unless ``clip_tokens`` says otherwise."""
    tokens = needle_tokens(needle, samples.tokenizer, samples.fmt)
    stream = samples.stream(rng, clip_tokens or max(1, length // 100))
    return retrieval_document(tokens, depth, length, stream, samples.geometry)


def retrieval_batch(docs: list[RetrievalDocument], *, vision_token_id: int, geometry: PatchGeometry,
                    tokens_per_second: float = 2.0, pack_index: int = 0) -> PackedBatch:
    """One pack of retrieval documents; labels on each document's answer and turn end."""
    flat = [p for d in docs for p in d.parts]
    patches = [p.patches for p in flat if p.patches is not None]
    pixels = torch.from_numpy(np.concatenate(patches)) if patches else torch.zeros((0, geometry.patch_bytes), dtype=torch.uint8)
    parts = assemble([p.doc for p in flat], pixels, vision_token_id=vision_token_id,
                     tokens_per_second=tokens_per_second, patch_grid_scale=geometry.merge, pack_index=pack_index)
    positions = parts.position_ids.clone()
    labels = torch.full_like(parts.input_ids, IGNORE_INDEX)
    cu = parts.cu_seqlens.tolist()
    part_doc, starts, i = [], [0], 0
    for d, doc in enumerate(docs):
        offset = 0
        for _ in doc.parts:  # each part's positions start at 0: continue from the previous part
            a, b = cu[i], cu[i + 1]
            positions[:, a:b] += offset
            offset = int(positions[:, a:b].max()) + 1
            part_doc.append(d)
            i += 1
        start = starts[-1]
        a = start + doc.answer_at
        labels[a - 1:a - 1 + doc.trained_len] = parts.input_ids[a:a + doc.trained_len]
        starts.append(start + doc.length)
    video_doc = torch.tensor([part_doc[int(p)] for p in parts.video_doc], dtype=torch.int32)
    return PackedBatch(input_ids=parts.input_ids, labels=labels, position_ids=positions,
                       cu_seqlens=torch.tensor(starts, dtype=torch.int32), pixel_patches=parts.pixel_patches,
                       video_grid_thw=parts.video_grid_thw, video_doc=video_doc,
                       doc_keys=[f"{docs[d].parts[0].doc.key}" for d in range(len(docs))], pack_index=pack_index)
