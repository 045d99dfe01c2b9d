"""Shards are plain tars: GNU tar, Python's tarfile and webdataset read them as written."""

import io
import json
import subprocess
import tarfile

import numpy as np
import pytest
import webdataset
import zstandard
from shard_samples import random_sample, write_shard

from shards.format import FRAMES, JSON, MEMBERS, TEXT, member_name
from shards.reader import ShardReader


@pytest.fixture(params=[False, True], ids=["plain", "delta"])
def shard(request, tmp_path, rng):
    specs = [random_sample(rng, f"sample_{i}") for i in range(3)] + [random_sample(rng, "K" * 160, t=2)]
    tar_path = tmp_path / "shard-000000.tar"
    write_shard(tar_path, specs, frame_delta=request.param)
    return tar_path, specs, request.param


def stored_frames(spec, delta: bool) -> bytes:
    """The raw (uncompressed) bytes the frames member must hold, computed here independently."""
    frames = spec.frames.astype(np.int16)
    if delta:
        frames[1:] = frames[1:] - frames[:-1]
    return (frames % 256).astype(np.uint8).tobytes()


def check_members(files: dict[str, bytes], specs, delta: bool) -> None:
    """``files`` maps member name to bytes, as some tar reader extracted them."""
    assert set(files) == {member_name(s.key, m) for s in specs for m in MEMBERS}
    for spec in specs:
        raw = zstandard.ZstdDecompressor().stream_reader(files[member_name(spec.key, FRAMES)]).read()
        assert raw == stored_frames(spec, delta)
        meta = json.loads(files[member_name(spec.key, JSON)])
        assert meta["frames"]["shape"] == list(spec.frames.shape) and meta["frames"]["delta"] is delta
        assert {k: meta[k] for k in spec.meta} == spec.meta
        text = np.load(io.BytesIO(files[member_name(spec.key, TEXT)]))
        assert text.dtype == np.int32
        np.testing.assert_array_equal(text, spec.text)


def test_gnu_tar_lists_and_extracts_the_members(shard, tmp_path):
    tar_path, specs, delta = shard
    listing = subprocess.run(["tar", "-tf", str(tar_path)], check=True, capture_output=True, text=True)
    assert listing.stderr == ""
    assert listing.stdout.splitlines() == [member_name(s.key, m) for s in specs for m in MEMBERS]
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(tar_path), "-C", str(out)], check=True, capture_output=True)
    check_members({p.name: p.read_bytes() for p in out.iterdir()}, specs, delta)
    verbose = subprocess.run(
        ["tar", "-tvf", str(tar_path)], check=True, capture_output=True, text=True
    ).stdout
    assert all(
        line.startswith("-rw-r--r-- 0/0") and " 1970-01-01 00:00 " in line for line in verbose.splitlines()
    )


def test_python_tarfile_reads_the_members(shard):
    tar_path, specs, delta = shard
    with tarfile.open(tar_path) as tar:
        files = {info.name: tar.extractfile(info).read() for info in tar}
    check_members(files, specs, delta)


def test_webdataset_iterates_samples_with_three_members(shard):
    tar_path, specs, delta = shard
    dataset = webdataset.WebDataset(str(tar_path), shardshuffle=False, empty_check=False)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == [s.key for s in specs]
    files = {}
    for sample in samples:
        assert {k for k in sample if not k.startswith("__")} == {"frames.zst", "json", "text.npy"}
        files.update(
            {f"{sample['__key__']}.{ext}": sample[ext] for ext in ("frames.zst", "json", "text.npy")}
        )
    check_members(files, specs, delta)


def test_index_offsets_point_at_the_member_data(shard):
    """Random access by offset: the index alone locates every member's bytes."""
    tar_path, specs, _ = shard
    with tarfile.open(tar_path) as tar:
        by_tarfile = {info.name: (info.offset_data, info.size, tar.extractfile(info).read()) for info in tar}
    reader = ShardReader(tar_path)
    with open(tar_path, "rb") as f:
        for spec in reversed(specs):  # any order: no scanning
            for member in MEMBERS:
                loc = reader.location(spec.key, member)
                offset, size, data = by_tarfile[member_name(spec.key, member)]
                assert (loc.offset, loc.size) == (offset, size)
                f.seek(loc.offset)
                assert f.read(loc.size) == data
                assert reader.read_member(spec.key, member) == data
