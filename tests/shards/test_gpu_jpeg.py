"""JPEG frames left for the device (``jpeg_on_device``): on the CPU the batch's ``to()`` decodes them
(the CPU fallback, Pillow's libjpeg-turbo) and must give exactly the pack a
loader worker decodes itself. The nvJPEG run is in tests/gpu/test_gpu_jpeg.py."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_jpeg_frames import VISION_ID, jpeg_dataset, real_frames  # noqa: F401 (fixtures)

from shards import gpu_jpeg
from shards.gpu_jpeg import DeviceDecodeBatch, patchify
from shards.load_patches import PatchGeometry, write_patches
from shards.load_sampler import PackSampler, StatefulLoader
from shards.loader import PackDataset
from shards.packing import pack_samples
from shards.reader import DatasetReader


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    groups=st.integers(1, 3),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    patch=st.sampled_from([2, 14]),
    merge=st.sampled_from([1, 2]),
    tp=st.sampled_from([1, 2]),
)
def test_patchify_on_tensors_matches_write_patches(seed, groups, rows, cols, patch, merge, tp):
    geometry = PatchGeometry(patch=patch, temporal_patch=tp, merge=merge)
    frames = np.random.default_rng(seed).integers(
        0, 256, (groups * tp, rows * patch * merge, cols * patch * merge, 3), dtype=np.uint8
    )
    want = np.empty((groups * rows * cols * merge * merge, geometry.patch_bytes), np.uint8)
    write_patches(frames, want, geometry)
    np.testing.assert_array_equal(patchify(torch.from_numpy(frames), geometry).numpy(), want)


def loaders(folder, specs):
    plan = pack_samples(
        {k: s.meta["vision_tokens"] + s.text.size for k, s in specs.items()},
        max_tokens=max(s.meta["vision_tokens"] + s.text.size for s in specs.values()) + 50,
    )
    reader = DatasetReader(folder)
    return (
        PackDataset(plan, reader, vision_token_id=VISION_ID),
        PackDataset(plan, reader, vision_token_id=VISION_ID, jpeg_on_device=True),
    )


@pytest.mark.parametrize("batch_frames", [4, 256])
def test_device_decode_gives_the_pack_the_worker_decodes(jpeg_dataset, batch_frames, monkeypatch):  # noqa: F811
    monkeypatch.setattr(gpu_jpeg, "DEVICE_BATCH_FRAMES", batch_frames)  # 4: a video over several calls
    folder, specs = jpeg_dataset
    in_worker, on_device = loaders(folder, specs)
    deferred = 0
    for pack in range(len(in_worker)):
        want = in_worker[pack]
        host = on_device[pack]
        jpeg_docs = [k for k in host.doc_keys if k != "zbikes"]
        assert isinstance(host, DeviceDecodeBatch) == bool(jpeg_docs)
        if jpeg_docs:
            deferred += len(host.compressed.videos)
            assert [v.key for v in host.compressed.videos] == jpeg_docs
        got = host.to("cpu")
        for name in ("input_ids", "labels", "position_ids", "cu_seqlens", "video_grid_thw", "pixel_patches"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, msg=name)
    assert deferred == 2


def test_device_decode_batches_cross_the_worker_process(jpeg_dataset):  # noqa: F811
    folder, specs = jpeg_dataset
    in_worker, on_device = loaders(folder, specs)
    # spawn: a fresh worker interpreter, as a training rank's would be; a fork of this long-lived test
    # process (threads of earlier tests) once hung in the full suite
    loader = StatefulLoader(on_device, PackSampler(len(on_device), shuffle=False), num_workers=1,
                            multiprocessing_context="spawn")
    for batch in loader:
        want = in_worker[batch.pack_index]
        assert torch.equal(batch.to("cpu").pixel_patches, want.pixel_patches)
