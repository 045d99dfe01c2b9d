"""nvJPEG (torchvision.io.decode_jpeg on CUDA) decodes the shards' JPEG frames like libjpeg-turbo.

Real frames decoded by the pipeline, stored by the shard format's JPEG codec: the GPU decode must
match the CPU reader within IDCT rounding, and a pack left for the device must come out of
``batch.to("cuda")`` as the worker-decoded pack (within the same rounding).
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode import iter_frame_windows
from pipeline.sample_videos import sample_clip
from shards.gpu_jpeg import decode_frames, patchify
from shards.jpeg_frames import decode_jpeg, encode_jpeg
from shards.load_patches import DEFAULT_GEOMETRY, write_patches

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.concatenate(list(iter_frame_windows(sample_clip("bigbuckbunny.mp4"), range(0, 120, 10), 336, 588)))


def test_nvjpeg_matches_libjpeg_turbo(frames):
    jpegs = [encode_jpeg(f, 93) for f in frames]
    cpu = np.stack([decode_jpeg(j, f.shape, "cpu") for j, f in zip(jpegs, frames)])
    gpu = decode_frames(jpegs, frames.shape[1:], "cuda", "gpu")
    assert gpu.is_cuda and tuple(gpu.shape) == frames.shape
    diff = np.abs(gpu.cpu().numpy().astype(int) - cpu)
    assert diff.max() <= 4 and diff.mean() < 0.1
    patches = patchify(gpu, DEFAULT_GEOMETRY).cpu().numpy()
    want = np.empty_like(patches)
    write_patches(gpu.cpu().numpy(), want)
    np.testing.assert_array_equal(patches, want)
