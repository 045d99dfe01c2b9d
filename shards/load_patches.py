"""Frames (T, H, W, 3) to ViT input patches in the order the LM consumes merged tokens.

Why this order: after the ViT, the merger joins each 2x2 block of neighbouring patches into one
LM token by taking 4 consecutive patches. Emitting patches as (group t, merged row i, merged col j,
sub-row di, sub-col dj) makes every 4 consecutive patches one LM token and the LM tokens of a
video come out in (t, i, j) row-major order, the order of the video's positions in the packed
sequence, so no index shuffle is needed on the accelerator.

Each patch is flattened as (temporal_patch, patch, patch, 3) uint8: the two frames of a group,
then pixel rows, columns, channels.

Patches are written into a caller-given array chunk by chunk, so a long video never needs its
frames and its patches in memory at once.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchGeometry:
    """ViT patch size, temporal patch and spatial merge; one LM token per (patch*merge)^2 px of a group."""

    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2

    @property
    def block(self) -> int:
        """Pixels per side of one merged LM token."""
        return self.patch * self.merge

    @property
    def patch_bytes(self) -> int:
        return self.temporal_patch * self.patch * self.patch * 3

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Merged LM-token grid (groups, rows, cols) of a video; raises if the shape does not tile."""
        if (
            frames < 1
            or frames % self.temporal_patch
            or height % self.block
            or width % self.block
            or min(height, width) < 1
        ):
            raise ValueError(
                f"video of {frames} frames of {height}x{width} does not tile into {self.temporal_patch}-frame groups "
                f"of {self.block}x{self.block} px"
            )
        return frames // self.temporal_patch, height // self.block, width // self.block

    @property
    def patches_per_token(self) -> int:
        return self.merge * self.merge


DEFAULT_GEOMETRY = PatchGeometry()


def write_patches(frames: np.ndarray, out: np.ndarray, geometry: PatchGeometry = DEFAULT_GEOMETRY) -> None:
    """Write the patches of ``frames`` (a whole number of groups) into ``out`` [n_patches, patch_bytes].

    ``out`` must have exactly ``groups * rows * cols * merge**2`` rows; it is usually a slice of
    the pack's patch array.
    """
    t, height, width, channels = frames.shape
    groups, rows, cols = geometry.grid(t, height, width)
    m, p, tp = geometry.merge, geometry.patch, geometry.temporal_patch
    expected = (groups * rows * cols * m * m, geometry.patch_bytes)
    if out.shape != expected or out.dtype != np.uint8 or not out.flags.c_contiguous or channels != 3:
        raise ValueError(
            f"patch output is {out.shape} {out.dtype}, expected C-contiguous {expected} uint8 for frames {frames.shape}"
        )
    # One patch row (p pixels x 3 channels) is contiguous in both arrays; moving it as one opaque
    # element instead of p*3 bytes makes the reordering copy about twice as fast.
    run = np.dtype((np.void, p * 3))
    src = np.ascontiguousarray(frames).reshape(groups, tp, rows, m, p, cols, m, p * 3).view(run)[..., 0]
    dst = out.reshape(groups, rows, cols, m, m, tp, p, p * 3).view(run)[..., 0]
    np.copyto(dst, src.transpose(0, 2, 5, 3, 6, 1, 4))
