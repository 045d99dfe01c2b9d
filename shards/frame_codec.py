"""The ``KEY.frames.zst`` codec: uint8 frames (T, H, W, 3) through zstd, optionally delta-coded.

Lossless; the default. ``shards.frame_codecs`` chooses between it and the lossy JPEG codec
(``shards.jpeg_frames``) by the name recorded per sample; the chunk and shape checks here are
shared by both.

Both directions work on windows of frames so that an hour of video never has to sit in memory
at once: the encoder takes chunks as the decoder in pipeline/ produces them, the decoder fills
either caller-given memory or fresh chunks.

Frame delta stores frame 0 as is and frame i as (frame[i] - frame[i-1]) mod 256. Static
regions become runs of zeros, which zstd compresses much better than raw pixels of
consecutive, nearly identical frames that lie megabytes apart in the stream.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import zstandard

from shards.errors import CorruptShard, InvalidSample

CODEC = "zstd"
DTYPE = "uint8"
CHANNELS = 3
MIN_LEVEL = -(1 << 17)  # zstd's fastest negative level
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL
_DECODE_READ_SIZE = 1 << 20


class FrameArrayShape:
    """What every codec's header derives from its ``shape`` [frames, height, width, channels]."""

    shape: tuple[int, int, int, int]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.shape[1:]

    @property
    def frame_bytes(self) -> int:
        h, w, c = self.frame_shape
        return h * w * c


@dataclass(frozen=True)
class FramesInfo(FrameArrayShape):
    """What ``KEY.json`` records under ``frames``: enough to decode the member."""

    shape: tuple[int, int, int, int]
    level: int
    delta: bool
    raw_bytes: int
    dtype: str = DTYPE
    codec: str = CODEC

    def to_json(self) -> dict:
        return {
            "codec": self.codec,
            "delta": self.delta,
            "dtype": self.dtype,
            "level": self.level,
            "raw_bytes": self.raw_bytes,
            "shape": list(self.shape),
        }

    @classmethod
    def from_json(cls, value: object, what: str) -> "FramesInfo":
        """Parse and check the ``frames`` field of a sample's metadata; ``what`` names the sample."""
        if not isinstance(value, dict):
            raise CorruptShard(f"{what}: metadata field 'frames' is missing or not an object")
        try:
            shape = tuple(int(n) for n in value["shape"])
            info = cls(
                shape=shape,  # type: ignore[arg-type]
                level=int(value["level"]),
                delta=bool(value["delta"]),
                raw_bytes=int(value["raw_bytes"]),
                dtype=str(value["dtype"]),
                codec=str(value["codec"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptShard(f"{what}: metadata field 'frames' is malformed ({e!r}): {value!r}") from e
        if info.codec != CODEC:
            raise CorruptShard(f"{what}: frames are {info.codec}, not {CODEC}")
        check_frames_shape(shape, info.raw_bytes, info.dtype, what)
        return info


def check_frames_shape(shape: tuple, raw_bytes: int, dtype: str, what: str) -> None:
    """The checks every codec's metadata passes: uint8 (T>=1, H>=1, W>=1, 3), raw_bytes to match."""
    if dtype != DTYPE:
        raise CorruptShard(f"{what}: frames are {dtype}; this reader knows {DTYPE}")
    if len(shape) != 4 or shape[3] != CHANNELS or min(shape) < 1:
        raise CorruptShard(f"{what}: frames shape {list(shape)} is not (T>=1, H>=1, W>=1, 3)")
    if raw_bytes != shape[0] * shape[1] * shape[2] * shape[3]:
        raise CorruptShard(f"{what}: frames raw_bytes {raw_bytes} does not match shape {list(shape)}")


def check_chunk(chunk: object, frame_shape: tuple | None, frames_done: int, what: str) -> np.ndarray:
    """A frame chunk as every encoder takes it: C-contiguous uint8 (n, H, W, 3), H and W those of
    the earlier chunks (``frame_shape``, None for the first); errors name the sample and frame."""
    where = f"{what}: frame chunk starting at frame {frames_done}"
    if not isinstance(chunk, np.ndarray):
        raise InvalidSample(f"{where} is a {type(chunk).__name__}, not a numpy array")
    if chunk.dtype != np.uint8:
        raise InvalidSample(f"{where} has dtype {chunk.dtype}, expected uint8")
    if chunk.ndim != 4 or chunk.shape[3] != CHANNELS or chunk.shape[1] < 1 or chunk.shape[2] < 1:
        raise InvalidSample(f"{where} has shape {chunk.shape}, expected (n, H, W, 3)")
    if frame_shape is not None and chunk.shape[1:] != frame_shape:
        raise InvalidSample(f"{where} has frame shape {chunk.shape[1:]}, but earlier chunks had {frame_shape}")
    return np.ascontiguousarray(chunk)


def no_frames(what: str) -> InvalidSample:
    return InvalidSample(f"{what}: no frames (frame_chunks was empty); a sample needs T >= 1 frames")


def check_level(level: object) -> int:
    if (
        isinstance(level, bool)
        or not isinstance(level, int)
        or level == 0
        or not MIN_LEVEL <= level <= MAX_LEVEL
    ):
        raise ValueError(f"zstd level must be a non-zero int in [{MIN_LEVEL}, {MAX_LEVEL}], got {level!r}")
    return level


class _Sink:
    """The ``write()`` method zstd's stream writer calls with each piece of compressed output."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[bytes], object]):
        self.write = write


class FrameEncoder:
    """Compresses chunks of frames into one zstd frame, handing compressed bytes to ``write``.

    Holds at most one input chunk, its delta and one previous frame: memory does not grow
    with the number of frames.
    """

    def __init__(self, write: Callable[[bytes], object], *, level: int, delta: bool, what: str):
        self._level = check_level(level)
        self._delta = delta
        self._what = what
        # A stream writer, not compressobj(): it hands zstd's output on in ~128 KiB pieces from one
        # reused buffer, where compressobj() grows a fresh bytes object to a chunk's whole compressed
        # size (~16 MiB per 32 frames at 336x588), paying page faults and copies, and the tar then
        # gets 16 MiB writes. Measured on 336x588 frames at level 1 (2-core VM, 2026-11-24): the
        # writer's own CPU fell from ~3.8-4.1 to ~2.9-3.2 ms/frame inside an encode unit. The
        # zstd frame written is byte for byte the same.
        self._stream = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(
            _Sink(write), closefd=False
        )
        self._frame_shape: tuple[int, int, int] | None = None
        self._frames = 0
        self._previous: np.ndarray | None = None  # last frame of the previous chunk (delta only)

    def add(self, chunk: np.ndarray) -> None:
        chunk = self._checked(chunk)
        if chunk.shape[0] == 0:
            return
        self._stream.write(self._delta_code(chunk) if self._delta else chunk)
        self._frames += chunk.shape[0]

    def finish(self) -> FramesInfo:
        if self._frames == 0:
            raise no_frames(self._what)
        self._stream.close()  # ends the zstd frame; the sink stays open (closefd=False)
        shape = (self._frames, *self._frame_shape)
        return FramesInfo(shape=shape, level=self._level, delta=self._delta, raw_bytes=int(np.prod(shape)))

    def _checked(self, chunk: object) -> np.ndarray:
        chunk = check_chunk(chunk, self._frame_shape, self._frames, self._what)
        self._frame_shape = chunk.shape[1:]
        return chunk

    def _delta_code(self, chunk: np.ndarray) -> np.ndarray:
        coded = np.empty_like(chunk)
        np.subtract(chunk[1:], chunk[:-1], out=coded[1:])  # uint8 arithmetic wraps mod 256
        if self._previous is None:
            coded[0] = chunk[0]
        else:
            np.subtract(chunk[0], self._previous, out=coded[0])
        self._previous = chunk[-1].copy()
        return coded


def decode_frames(
    source: object,
    info: FramesInfo,
    *,
    what: str,
    chunk_frames: int = 8,
    out: np.ndarray | None = None,
    on_end: Callable[[], None] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the frames of one member in chunks of up to ``chunk_frames`` frames.

    ``source`` has a ``read(n)`` method returning compressed bytes. With ``out`` (shape
    ``info.shape``, uint8, C order) the frames are decoded in place and the chunks are views
    of it. ``on_end`` runs once the whole stream is decoded and checked, before the last chunk
    is yielded, so a checksum failure is raised before a caller sees the final frames.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if out is not None and (out.shape != info.shape or out.dtype != np.uint8 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {info.shape}")
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=_DECODE_READ_SIZE)
    total = info.shape[0]
    previous: np.ndarray | None = None
    for start in range(0, total, chunk_frames):
        n = min(chunk_frames, total - start)
        chunk = out[start : start + n] if out is not None else np.empty((n, *info.frame_shape), np.uint8)
        _fill(reader, memoryview(chunk).cast("B"), what, start * info.frame_bytes, info.raw_bytes)
        if info.delta:
            previous = _undo_delta(chunk, previous)
        if start + n == total:
            _check_stream_end(reader, what, info.raw_bytes)
            if on_end is not None:
                on_end()
        yield chunk


def _undo_delta(chunk: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Running sum over frames, in place, mod 256; returns a copy of the last decoded frame.

    A loop of per-frame adds, because np.cumsum over uint8 along axis 0 is ~300x slower.
    """
    if previous is not None:
        np.add(chunk[0], previous, out=chunk[0])
    for i in range(1, len(chunk)):
        np.add(chunk[i], chunk[i - 1], out=chunk[i])
    return chunk[-1].copy()


def _fill(reader, buffer: memoryview, what: str, done: int, raw_bytes: int) -> None:
    filled = 0
    while filled < len(buffer):
        try:
            got = reader.readinto(buffer[filled:])
        except zstandard.ZstdError as e:
            raise CorruptShard(
                f"{what}: zstd cannot decode the frames after {done + filled} bytes: {e}"
            ) from e
        if not got:
            raise CorruptShard(
                f"{what}: zstd stream ends after {done + filled} bytes, metadata says {raw_bytes} bytes of frames"
            )
        filled += got


def _check_stream_end(reader, what: str, raw_bytes: int) -> None:
    try:
        extra = reader.read(1)
    except zstandard.ZstdError as e:
        raise CorruptShard(f"{what}: zstd stream is damaged after the frames: {e}") from e
    if extra:
        raise CorruptShard(
            f"{what}: zstd stream holds more than the {raw_bytes} bytes of frames in the metadata"
        )
