"""FrameEncoder streams zstd output in pieces; what it writes must not depend on how it streams."""

import io

import numpy as np
import pytest
import zstandard

from shards.frame_codec import FrameEncoder, FramesInfo, decode_frames


@pytest.mark.parametrize("delta", [False, True])
def test_encoder_writes_one_zstd_frame_equal_to_compressobj_and_decodes_back(rng, delta):
    """Several chunks, each larger than zstd's ~128 KiB output piece, so ``write`` is called many
    times: the bytes are exactly those of ``compressobj()`` over the same (delta-coded) chunks, the
    encoder used before, and a plain zstd decompressor reads them back as the frames."""
    frames = rng.integers(0, 256, (12, 96, 128, 3), dtype=np.uint8)
    frames[:, :48] = frames[0, :48]  # a static half, so delta and zstd have something to do
    chunks = [frames[:5], frames[5:6], frames[6:]]
    pieces: list[bytes] = []
    encoder = FrameEncoder(pieces.append, level=1, delta=delta, what="test")
    for chunk in chunks:
        encoder.add(chunk)
    info = encoder.finish()
    assert len(pieces) > 3

    coded = np.concatenate([frames[:1], frames[1:] - frames[:-1]]) if delta else frames
    old = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    expected = b"".join([old.compress(coded[:5]), old.compress(coded[5:6]), old.compress(coded[6:]), old.flush()])
    stream = b"".join(pieces)
    assert stream == expected
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stream) == coded.tobytes()

    assert info == FramesInfo(shape=frames.shape, level=1, delta=delta, raw_bytes=frames.nbytes)
    decoded = np.concatenate(list(decode_frames(io.BytesIO(stream), info, what="test", chunk_frames=5)))
    np.testing.assert_array_equal(decoded, frames)
