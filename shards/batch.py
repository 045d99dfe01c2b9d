"""The batch contract: one packed training sequence, as the model receives it.

A ``PackedBatch`` holds one pack: the documents (samples) of one plan row group laid end to end,
S real tokens, no padding inside. Documents are in the plan's position order; ``n_docs`` of them,
``n_videos`` of which carry a video (a text-only document has none).

Fields
------
``input_ids``: int64 [S]
    Per document: text ids[:vision_at], then ``vision_tokens`` copies of ``vision_token_id``
    (the tokenizer's ``<|vision|>`` id, passed to the loader), then text ids[vision_at:]. In a
    per-group video layout (Qwen3-VL's, pipeline/video_layout.py) ``vision_at`` holds one text
    index per temporal group and each group's h' x w' placeholders go before its own index;
    the text between them (the groups' times and markers) was stored by the encode step.
``labels``: int64 [S]
    labels[i] = input_ids[i+1] when i+1 lies in the same document and is a text token inside
    one of the document's ``loss_spans`` (``[start, end)`` ranges of text-id indices); otherwise
    -100. The model computes next-token cross entropy on labels != -100 with no further shift.
    The last token of every document is -100, so nothing is predicted across a boundary.
``position_ids``: int64 [3, S]
    Multimodal rotary positions (t, h, w), restarting at 0 in every document. Text tokens get
    t = h = w = running index. The video block (G temporal groups, merged grid h' x w' =
    H/28 x W/28) gets, with base = running index at the block start,
    t = base + round_half_up(start time of the group in seconds * tokens_per_second) (config,
    default 2; non-decreasing along the video), h = base + merged row, w = base + merged col,
    in (t, row, col) row-major order. Text after the block resumes at (largest position the
    block used) + 1. In a per-group layout each group is numbered as a picture of its own
    (``shards.positions.group_positions``, as Qwen3-VL). See ``shards.positions``.
``cu_seqlens``: int32 [n_docs + 1]
    Document boundaries: document d is tokens cu_seqlens[d]:cu_seqlens[d+1]; cu_seqlens[-1] = S.
``pixel_patches``: uint8 [N_patches, 2*14*14*3]
    ViT input patches of every video of the pack, video by video in document order, then
    temporal group t, merged row i, merged col j, then the 2x2 sub-patch (di, dj); each patch
    flattened as (temporal 2, 14, 14, 3). Every 4 consecutive patches form one merged LM token,
    and a video's LM tokens come in (t, i, j) row-major order, the order of its vision
    positions in ``input_ids``. N_patches = 4 * (number of vision tokens in the pack).
``video_grid_thw``: int32 [n_videos, 3]
    (groups, H/14, W/14) of each video, in patch units (the ViT's grid before merging).
``video_doc``: int32 [n_videos]
    Index of the document each video belongs to.
``doc_keys``: list[str]
    Sample key of each document.
``pack_index``: int
    Which pack of the plan this is.

Patch size 14, temporal patch 2 and merge 2 are the defaults of ``shards.load_patches.PatchGeometry``;
the shapes above scale with it.
"""

from dataclasses import dataclass, fields

import numpy as np
import torch

from shards.positions import document_positions, group_positions

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    pixel_patches: torch.Tensor
    video_grid_thw: torch.Tensor
    video_doc: torch.Tensor
    doc_keys: list[str]
    pack_index: int
    # The batch this one was copied from while it was on the host: layouts plan from its
    # metadata (cu_seqlens, placeholders, grids) without reading the device back.
    host: "PackedBatch | None" = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def _map_tensors(self, fn) -> "PackedBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedBatch(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def pin_memory(self) -> "PackedBatch":
        """Called by DataLoader(pin_memory=True)."""
        return self._map_tensors(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        moved = self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))
        moved.host = self.host if self.host is not None or self.input_ids.is_cuda else self
        return moved


@dataclass(frozen=True)
class Document:
    """What the batch needs of one sample besides its pixels.

    ``grid`` is the merged LM-token grid (groups, rows, cols) of its video, or None for text
    only; ``times`` the start time in seconds of each group. ``vision_at``: where the video goes
    in the text, one index (one block) or a tuple of one index per temporal group.
    """

    key: str
    text: np.ndarray  # int ids
    vision_at: int | tuple[int, ...]
    loss_spans: tuple[tuple[int, int], ...]
    grid: tuple[int, int, int] | None = None
    times: np.ndarray | None = None

    @property
    def vision_tokens(self) -> int:
        return int(np.prod(self.grid)) if self.grid else 0

    @property
    def length(self) -> int:
        return self.text.size + self.vision_tokens


def check_loss_spans(spans: object, n_text: int, what: str) -> tuple[tuple[int, int], ...]:
    """``spans`` as a tuple of (start, end) with 0 <= start <= end <= n_text, or ValueError naming ``what``."""
    try:
        pairs = tuple((int(s), int(e)) for s, e in spans)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: loss_spans {spans!r} is not a list of [start, end) pairs") from e
    for start, end in pairs:
        if not 0 <= start <= end <= n_text:
            raise ValueError(f"{what}: loss span [{start}, {end}) is outside the {n_text} text tokens")
    return pairs


def check_vision_at(value: object, n_text: int, grid: tuple[int, int, int] | None) -> int | tuple[int, ...]:
    """A sample's ``vision_at``: one text index, or a list of one per temporal group of ``grid``
    (non-decreasing); ValueError saying what is wrong."""
    if isinstance(value, (list, tuple)):
        slots = tuple(int(v) for v in value)
        if grid is None or len(slots) != grid[0]:
            raise ValueError(f"vision_at has {len(slots)} group places but the video has "
                             f"{grid[0] if grid else 0} temporal groups")
        if any(b < a for a, b in zip((0, *slots), (*slots, n_text), strict=True)):
            raise ValueError(f"vision_at {list(slots)} is not non-decreasing within the {n_text} text tokens")
        return slots
    at = int(value)  # type: ignore[call-overload]
    if not 0 <= at <= n_text:
        raise ValueError(f"vision_at {at} is outside the {n_text} text tokens")
    return at


def _vision_runs(doc: Document) -> list[tuple[int, int]]:
    """(text index, placeholders that go before it) for each place of the document's video."""
    if isinstance(doc.vision_at, tuple):
        return [(at, doc.grid[1] * doc.grid[2]) for at in doc.vision_at]
    return [(doc.vision_at, doc.vision_tokens)]


def _with_vision(values: np.ndarray, runs: list[tuple[int, int]], fill) -> np.ndarray:
    pieces, prev = [], 0
    for at, n in runs:
        pieces += [values[prev:at], np.full(n, fill, values.dtype)]
        prev = at
    pieces.append(values[prev:])
    return np.concatenate(pieces)


def _document_ids_and_labels(doc: Document, vision_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    text = doc.text.astype(np.int64)
    runs = _vision_runs(doc)
    ids = _with_vision(text, runs, vision_token_id)
    in_span = np.zeros(text.size, bool)
    for start, end in doc.loss_spans:
        in_span[start:end] = True
    target = _with_vision(in_span, runs, False)
    labels = np.full(ids.size, IGNORE_INDEX, np.int64)
    labels[:-1] = np.where(target[1:], ids[1:], IGNORE_INDEX)
    return ids, labels


def assemble(
    docs: list[Document],
    pixel_patches: torch.Tensor,
    *,
    vision_token_id: int,
    tokens_per_second: float = 2.0,
    patch_grid_scale: int = 2,
    pack_index: int = 0,
) -> PackedBatch:
    """Build the batch of ``docs`` around patches the caller already wrote (see ``shards.load_patches``).

    ``patch_grid_scale`` is the spatial merge: a video's grid in patches is its merged grid times it.
    """
    ids, labels, positions = [], [], []
    grids, video_doc = [], []
    for d, doc in enumerate(docs):
        doc_ids, doc_labels = _document_ids_and_labels(doc, vision_token_id)
        ids.append(doc_ids)
        labels.append(doc_labels)
        if isinstance(doc.vision_at, tuple):
            positions.append(group_positions(doc.text.size, doc.vision_at, doc.grid))
        else:
            positions.append(
                document_positions(doc.text.size, doc.vision_at, doc.grid, doc.times, tokens_per_second)
            )
        if doc.grid:
            groups, rows, cols = doc.grid
            grids.append((groups, rows * patch_grid_scale, cols * patch_grid_scale))
            video_doc.append(d)
    lengths = [doc.length for doc in docs]
    cu_seqlens = np.zeros(len(docs) + 1, np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    return PackedBatch(
        input_ids=torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
        labels=torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.int64)),
        position_ids=torch.from_numpy(
            np.concatenate(positions, axis=1) if positions else np.zeros((3, 0), np.int64)
        ),
        cu_seqlens=torch.from_numpy(cu_seqlens),
        pixel_patches=pixel_patches,
        video_grid_thw=torch.tensor(grids, dtype=torch.int32).reshape(-1, 3),
        video_doc=torch.tensor(video_doc, dtype=torch.int32),
        doc_keys=[doc.key for doc in docs],
        pack_index=int(pack_index),
    )
