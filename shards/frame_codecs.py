"""The frame codecs of the shard format, selected by the name each sample records.

``zstd`` (lossless, the default; ``shards.frame_codec``) and ``jpeg`` (lossy, quality chosen per
dataset; ``shards.jpeg_frames``). A dataset picks one at preprocess time (``FrameCodec``); every
sample records its codec in ``KEY.json`` (``frames.codec``) and in the index (``frames_codec``),
so readers decode any mix, and shards written before codecs existed read as zstd.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from shards.errors import CorruptShard
from shards.format import DEFAULT_FRAME_CODEC, FRAMES_EXTENSIONS
from shards.frame_codec import FrameEncoder, FramesInfo, check_level, decode_frames
from shards.jpeg_frames import DEFAULT_QUALITY, JpegEncoder, JpegFramesInfo, check_quality, decode_jpeg_frames

CODECS: tuple[str, ...] = tuple(FRAMES_EXTENSIONS)
LOSSY_CODECS = ("jpeg",)
AnyFramesInfo = FramesInfo | JpegFramesInfo


@dataclass(frozen=True)
class FrameCodec:
    """A dataset's choice of frame codec and its settings (those of the other codec are unused)."""

    name: str = DEFAULT_FRAME_CODEC
    zstd_level: int = 3
    frame_delta: bool = False
    jpeg_quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"unknown frame codec {self.name!r}; known: {', '.join(CODECS)}")
        check_level(self.zstd_level)
        check_quality(self.jpeg_quality)
        if self.frame_delta and self.name != "zstd":
            raise ValueError(f"frame delta is a zstd option; the {self.name} codec codes every frame alone")

    def encoder(self, write: Callable[[bytes], object], what: str) -> FrameEncoder | JpegEncoder:
        """An encoder with ``add(chunk)`` and ``finish() -> info``, writing the member through ``write``."""
        if self.name == "jpeg":
            return JpegEncoder(write, quality=self.jpeg_quality, what=what)
        return FrameEncoder(write, level=self.zstd_level, delta=self.frame_delta, what=what)


def frames_info_from_json(value: object, what: str) -> AnyFramesInfo:
    """Parse and check a sample's ``frames`` metadata, whatever its codec; ``what`` names the sample."""
    if not isinstance(value, dict):
        raise CorruptShard(f"{what}: metadata field 'frames' is missing or not an object")
    codec = value.get("codec")
    if codec == "jpeg":
        return JpegFramesInfo.from_json(value, what)
    if codec == "zstd":
        return FramesInfo.from_json(value, what)
    raise CorruptShard(f"{what}: frames codec {codec!r} is unknown; this reader knows {', '.join(CODECS)}")


def decode_any(
    source: object,
    info: AnyFramesInfo,
    *,
    what: str,
    chunk_frames: int = 8,
    out: np.ndarray | None = None,
    on_end: Callable[[], None] | None = None,
) -> Iterator[np.ndarray]:
    """Frames of one member in chunks, by its codec (see ``shards.frame_codec.decode_frames``)."""
    decode = decode_jpeg_frames if isinstance(info, JpegFramesInfo) else decode_frames
    return decode(source, info, what=what, chunk_frames=chunk_frames, out=out, on_end=on_end)
