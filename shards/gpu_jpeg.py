"""JPEG frames decoded where the batch goes (nvJPEG on a GPU), for when loader CPU cores are scarce.

Why: decoding JPEG frames is most of a loader worker's CPU (tests/bench/RESULTS.md). With
``PackDataset(..., jpeg_on_device=True)`` the workers read and crc-check the compressed frames
of JPEG samples but leave their patch rows empty; the pack comes back as a ``DeviceDecodeBatch``
whose ``to(device)`` decodes them there in one batched call (``torchvision.io.decode_jpeg``,
nvJPEG on CUDA) and writes their patches into the moved ``pixel_patches`` with the same order
as ``shards.load_patches.write_patches``. The trainer's ``batch.to(device)`` is unchanged.

On the CPU the same path decodes with Pillow's libjpeg-turbo: the fallback the tests check
against the worker-decoded pack.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from shards.batch import PackedBatch
from shards.errors import CorruptShard
from shards.jpeg_frames import decode_jpeg
from shards.load_patches import PatchGeometry

DEVICE_BATCH_FRAMES = 256  # JPEG frames per nvJPEG call: ~150 MB decoded at 336x588


@dataclass
class JpegVideo:
    """One video of a pack left compressed: its JPEG frames and where its patches go."""

    key: str
    frames: list[bytes]
    frame_shape: tuple[int, int, int]
    first_patch: int


@dataclass
class CompressedVideos:
    geometry: PatchGeometry
    videos: list[JpegVideo] = field(default_factory=list)


def decode_frames(
    frames: list[bytes], frame_shape: tuple[int, int, int], device: torch.device | str, what: str
):
    """(T, H, W, 3) uint8 frames on ``device``: nvJPEG through torchvision on a GPU, Pillow on the CPU.

    Pillow (libjpeg-turbo) on the CPU, not torchvision's CPU decoder: that one took ~12x the
    CPU time per frame here (2-core VM, torchvision 0.29.1).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(np.stack([decode_jpeg(f, frame_shape, what) for f in frames]))
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode_jpeg
    except ImportError:
        raise RuntimeError(f"{what}: decoding JPEG frames on {device} needs torchvision (nvJPEG)") from None
    data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in frames]
    try:
        images = tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:
        raise CorruptShard(f"{what}: JPEG frames do not decode on {device}: {e}") from e
    decoded = torch.stack(images).permute(0, 2, 3, 1)
    if tuple(decoded.shape[1:]) != tuple(frame_shape):
        raise CorruptShard(
            f"{what}: JPEG frames decode to {tuple(decoded.shape[1:])}, metadata says {frame_shape}"
        )
    return decoded


def patchify(frames: torch.Tensor, geometry: PatchGeometry) -> torch.Tensor:
    """Patches of (T, H, W, 3) frames in the order of ``write_patches``, on the frames' device."""
    t, height, width, _ = frames.shape
    groups, rows, cols = geometry.grid(t, height, width)
    m, p, tp = geometry.merge, geometry.patch, geometry.temporal_patch
    blocks = frames.reshape(groups, tp, rows, m, p, cols, m, p, 3).permute(0, 2, 5, 3, 6, 1, 4, 7, 8)
    return blocks.reshape(groups * rows * cols * m * m, geometry.patch_bytes)


class DeviceDecodeBatch(PackedBatch):
    """A pack whose JPEG videos are decoded by ``to(device)``; ``compressed`` is a plain attribute
    (not a dataclass field) so the batch contract's own methods are unchanged."""

    compressed: CompressedVideos

    @classmethod
    def wrap(cls, batch: PackedBatch, compressed: CompressedVideos) -> "DeviceDecodeBatch":
        wrapped = cls.__new__(cls)
        wrapped.__dict__.update(batch.__dict__)
        wrapped.compressed = compressed
        return wrapped

    def pin_memory(self) -> "DeviceDecodeBatch":
        return DeviceDecodeBatch.wrap(super().pin_memory(), self.compressed)

    def to(self, device, non_blocking: bool = False) -> PackedBatch:
        moved = super().to(device, non_blocking=non_blocking)
        patches = moved.pixel_patches
        geometry = self.compressed.geometry
        step = DEVICE_BATCH_FRAMES // geometry.temporal_patch * geometry.temporal_patch
        for video in self.compressed.videos:
            row = video.first_patch
            for start in range(0, len(video.frames), step):  # bounded device memory per call
                what = f"sample {video.key!r} frames {start}-{min(start + step, len(video.frames)) - 1}"
                frames = decode_frames(
                    video.frames[start : start + step], video.frame_shape, patches.device, what
                )
                rows = patchify(frames, geometry)
                patches[row : row + rows.shape[0]].copy_(rows)
                row += rows.shape[0]
        return moved
