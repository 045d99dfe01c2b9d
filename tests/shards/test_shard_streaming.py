"""Memory of writing and reading one long video stays at a few windows, whatever its length."""

import tracemalloc
import zlib

import numpy as np
import pytest

from shards.format import index_path_for
from shards.reader import ShardReader
from shards.writer import ShardWriter

CHUNKS, CHUNK_SHAPE = 400, (8, 256, 256, 3)
RAW_BYTES = CHUNKS * int(np.prod(CHUNK_SHAPE))  # 629 MiB


def windows(rng, crc: list[int]):
    """400 windows of 8 frames, generated one at a time into one reused buffer.

    Each window differs (a new random row band), so zstd has real work; the running crc32 of
    the raw frames lets the test check the read-back without keeping them.
    """
    buffer = rng.integers(0, 256, CHUNK_SHAPE, dtype=np.uint8)
    for i in range(CHUNKS):
        band = (i * 16) % CHUNK_SHAPE[1]
        buffer[:, band : band + 16] = rng.integers(0, 256, (8, 16, 256, 3), dtype=np.uint8)
        crc[0] = zlib.crc32(buffer, crc[0])
        yield buffer


@pytest.mark.parametrize("delta", [False, True])
def test_writer_and_chunk_reader_memory_does_not_grow_with_frames(tmp_path, rng, delta):
    tar_path = tmp_path / "shard-000000.tar"
    raw_crc = [0]
    tracemalloc.start()
    try:
        with ShardWriter(tar_path, index_path_for(tar_path), zstd_level=1, frame_delta=delta) as writer:
            writer.add("long_video", {"vision_tokens": 1}, windows(rng, raw_crc), np.arange(10))
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        read_crc = 0
        frames = 0
        for chunk in ShardReader(tar_path).iter_frame_chunks("long_video", chunk_frames=16):
            read_crc = zlib.crc32(chunk, read_crc)
            frames += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(f"peaks: write {write_peak / 2**20:.1f} MiB, read {read_peak / 2**20:.1f} MiB")
    assert frames == CHUNKS * CHUNK_SHAPE[0]
    assert read_crc == raw_crc[0]
    assert writer.entries[0].members["frames"].size > RAW_BYTES // 4  # the frames really went through
    chunk_bytes = int(np.prod(CHUNK_SHAPE))
    # a few windows (input, delta, compressed output), never anything near the 629 MiB total
    assert write_peak < 6 * chunk_bytes, f"writer peak {write_peak / 2**20:.1f} MiB"
    assert read_peak < 8 * chunk_bytes, f"reader peak {read_peak / 2**20:.1f} MiB"
