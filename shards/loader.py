"""``PackDataset``: item i is pack i of a ``PackPlan``, read from the shards and assembled.

Why per pack and not per sample: the trainer consumes whole packed sequences, so one item is
one step's input; the DataLoader then runs with ``batch_size=None`` and workers assemble packs
in parallel with training.

Each sample is read by byte offset through the shard index (``shards.reader``), with every
member's crc32 checked; a mismatch raises ``ChecksumError`` naming shard and key, in a worker
too (the DataLoader re-raises it in the trainer). Metadata that contradicts itself or the plan
(token counts, frame shape, timestamps, loss spans) raises ``CorruptShard`` naming shard and
key rather than producing a silently wrong batch.

Memory per item is the pack itself: the patch array is allocated once for the whole pack and
each video's frames are decoded in windows straight into it (``shards.load_patches``).
With ``jpeg_on_device=True`` JPEG videos are read and checked but not decoded here: the batch's
``to(device)`` decodes them on the GPU (``shards.gpu_jpeg``), for when loader cores are scarce.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from shards.batch import Document, PackedBatch, assemble, check_loss_spans, check_vision_at
from shards.errors import CorruptShard, SampleNotFound
from shards.frame_codecs import frames_info_from_json
from shards.gpu_jpeg import CompressedVideos, DeviceDecodeBatch, JpegVideo
from shards.jpeg_frames import split_frames
from shards.load_patches import DEFAULT_GEOMETRY, PatchGeometry, write_patches
from shards.meta_codec import FRAMES_FIELD
from shards.packing import PackPlan
from shards.positions import group_times
from shards.reader import DatasetReader, ShardReader

_WINDOW_BYTES = 32 << 20  # raw frame bytes decoded per step


class PackDataset(Dataset):
    """Map-style dataset of packed sequences. ``vision_token_id`` is the tokenizer's ``<|vision|>`` id."""

    def __init__(
        self,
        plan: PackPlan | str | Path,
        dataset: DatasetReader | str | Path,
        *,
        vision_token_id: int,
        tokens_per_second: float = 2.0,
        geometry: PatchGeometry = DEFAULT_GEOMETRY,
        jpeg_on_device: bool = False,
    ):
        self.plan = plan if isinstance(plan, PackPlan) else PackPlan.read(plan)
        self.reader = dataset if isinstance(dataset, DatasetReader) else DatasetReader(dataset)
        self.vision_token_id = int(vision_token_id)
        self.tokens_per_second = float(tokens_per_second)
        self.geometry = geometry
        self.jpeg_on_device = bool(jpeg_on_device)

    def __len__(self) -> int:
        return self.plan.num_packs

    def __getitem__(self, pack: int) -> PackedBatch:
        pack = int(pack)
        rows = self.plan.rows(pack)
        sources = []
        for key, shard, tokens in zip(self.plan.key[rows], self.plan.shard[rows], self.plan.tokens[rows]):
            reader = self._shard(key, shard)
            sources.append((reader, self._document(reader, key, int(tokens))))
        docs = [doc for _, doc in sources]
        patches = _empty_patches(
            sum(doc.vision_tokens for doc in docs) * self.geometry.patches_per_token,
            self.geometry.patch_bytes,
        )
        compressed = self._fill_patches(sources, patches.numpy())
        batch = assemble(
            docs,
            patches,
            vision_token_id=self.vision_token_id,
            tokens_per_second=self.tokens_per_second,
            patch_grid_scale=self.geometry.merge,
            pack_index=pack,
        )
        return DeviceDecodeBatch.wrap(batch, compressed) if compressed.videos else batch

    # -- reading ---------------------------------------------------------------------------
    def _shard(self, key: str, shard: str | None) -> ShardReader:
        if shard is None:
            return self.reader.shard_for(key)
        reader = self.reader.shards.get(shard)
        if reader is None or key not in reader:
            raise SampleNotFound(
                f"{self.reader.dataset_dir}: the pack plan puts sample {key!r} in shard {shard!r}, "
                "which does not hold it; was the plan made for another dataset?"
            )
        return reader

    def _document(self, reader: ShardReader, key: str, planned_tokens: int) -> Document:
        what = f"{reader.tar_path}: sample {key!r}"
        meta = reader.read_meta(key)
        text = reader.read_text(key)
        try:
            return self._parse(key, meta, text, planned_tokens, what)
        except KeyError as e:
            raise CorruptShard(f"{what}: metadata lacks the field {e}") from e
        except (TypeError, ValueError) as e:
            raise CorruptShard(f"{what}: {e}") from e

    def _parse(self, key: str, meta: dict, text: np.ndarray, planned_tokens: int, what: str) -> Document:
        vision_tokens = int(meta.get("vision_tokens", 0))
        grid = times = None
        if vision_tokens:
            info = frames_info_from_json(meta.get(FRAMES_FIELD), what)
            frames, height, width, _ = info.shape
            grid = self.geometry.grid(frames, height, width)
            if int(np.prod(grid)) != vision_tokens:
                raise ValueError(
                    f"vision_tokens is {vision_tokens} but {frames} frames of {height}x{width} give {grid}"
                )
            timestamps = meta["timestamps"]
            if len(timestamps) != frames:
                raise ValueError(f"{len(timestamps)} timestamps for {frames} frames")
            times = group_times(timestamps, self.geometry.temporal_patch)
        tokens = text.size + vision_tokens
        if tokens != planned_tokens:
            raise ValueError(
                f"has {tokens} tokens but the pack plan says {planned_tokens}; the plan is stale"
            )
        vision_at = check_vision_at(meta.get("vision_at", 0), text.size, grid)
        return Document(
            key=key,
            text=text,
            vision_at=vision_at,
            loss_spans=check_loss_spans(meta["loss_spans"], text.size, what),
            grid=grid,
            times=times,
        )

    def _fill_patches(self, sources: list[tuple[ShardReader, Document]], patches: np.ndarray) -> CompressedVideos:
        """Decode every video into its patch rows; JPEG videos left for the device are returned instead."""
        per_group = self.geometry.patches_per_token
        start = 0
        compressed = CompressedVideos(self.geometry)
        for reader, doc in sources:
            if not doc.grid:
                continue
            if self.jpeg_on_device and reader.frames_codec(doc.key) == "jpeg":
                info, data = reader.compressed_frames(doc.key)
                frames = split_frames(data, info, f"{reader.tar_path}: sample {doc.key!r}")
                compressed.videos.append(JpegVideo(doc.key, frames, info.frame_shape, start))
                start += doc.vision_tokens * per_group
                continue
            _, rows, cols = doc.grid
            tp = self.geometry.temporal_patch
            frame_bytes = rows * cols * self.geometry.block**2 * 3
            window = max(tp, _WINDOW_BYTES // frame_bytes // tp * tp)
            group_patches = rows * cols * per_group
            for chunk in reader.iter_frame_chunks(doc.key, chunk_frames=window):
                n = chunk.shape[0] // tp * group_patches
                write_patches(chunk, patches[start : start + n], self.geometry)
                start += n
        if start != patches.shape[0]:
            raise AssertionError(f"filled {start} of {patches.shape[0]} patches")
        return compressed


def _empty_patches(n: int, patch_bytes: int) -> torch.Tensor:
    """The pack's patch array; in a DataLoader worker it lives in shared memory from the start.

    A worker hands tensors to the trainer through shared memory, which would otherwise mean
    one more copy of the largest array of the pack.
    """
    if get_worker_info() is None or n == 0:
        return torch.empty((n, patch_bytes), dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n * patch_bytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(n, patch_bytes)
