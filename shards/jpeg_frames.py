"""The ``KEY.frames.mjpeg`` codec: each frame a baseline JPEG (libjpeg-turbo through Pillow), end to end.

Why JPEG: lossless zstd keeps ~0.8 of the raw bytes of decoded video, hundreds of petabytes at
millions of video hours; JPEG at quality 93 with full-resolution chroma (4:4:4) keeps ~8-14% of
them (15-17% of zstd's) at 41.8-46.1 dB PSNR on the sample clips (tests/bench/RESULTS.md),
decodes at 1.4-1.7x zstd's CPU per frame, and is the one still-image codec GPUs decode in
batches (nvJPEG, ``shards.gpu_jpeg``). 4:4:4, not 4:2:0: at the same bytes it gives 1-2 dB more.

JPEGs laid end to end are an MJPEG stream (``ffmpeg -f mjpeg -i KEY.frames.mjpeg`` reads it);
the metadata records each frame's byte size, so a reader slices frames without parsing markers.

Fidelity is measured while writing, where the source frames are at hand: every ``PSNR_EVERY``-th
frame (frame 0 always) is decoded back and its squared error against the source recorded, so
``stats`` reports PSNR against the decoded source frames without decoding any video again.
"""

import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from shards.errors import CorruptShard
from shards.frame_codec import DTYPE, FrameArrayShape, check_chunk, check_frames_shape, no_frames

CODEC = "jpeg"
DEFAULT_QUALITY = 93
SUBSAMPLING = "4:4:4"
PSNR_EVERY = 8
_PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def check_quality(quality: object) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an int in [1, 100], got {quality!r}")
    return quality


@dataclass(frozen=True)
class JpegFramesInfo(FrameArrayShape):
    """What ``KEY.json`` records under ``frames`` for JPEG frames.

    ``psnr_frames`` frames were compared with their source; ``psnr_mse`` is their mean squared
    error over all pixels and channels (0 frames: not measured).
    """

    shape: tuple[int, int, int, int]
    quality: int
    frame_sizes: tuple[int, ...]
    psnr_frames: int
    psnr_mse: float
    raw_bytes: int
    subsampling: str = SUBSAMPLING
    dtype: str = DTYPE
    codec: str = CODEC

    @property
    def psnr_db(self) -> float | None:
        """PSNR of the measured frames against their source; inf if identical, None if none measured."""
        if not self.psnr_frames:
            return None
        return psnr_from_mse(self.psnr_mse)

    def to_json(self) -> dict:
        return {
            "codec": self.codec,
            "dtype": self.dtype,
            "frame_sizes": list(self.frame_sizes),
            "psnr": {"frames": self.psnr_frames, "mse": self.psnr_mse},
            "quality": self.quality,
            "raw_bytes": self.raw_bytes,
            "shape": list(self.shape),
            "subsampling": self.subsampling,
        }

    @classmethod
    def from_json(cls, value: dict, what: str) -> "JpegFramesInfo":
        try:
            info = cls(
                shape=tuple(int(n) for n in value["shape"]),  # type: ignore[arg-type]
                quality=int(value["quality"]),
                frame_sizes=tuple(int(n) for n in value["frame_sizes"]),
                psnr_frames=int(value["psnr"]["frames"]),
                psnr_mse=float(value["psnr"]["mse"]),
                raw_bytes=int(value["raw_bytes"]),
                subsampling=str(value["subsampling"]),
                dtype=str(value["dtype"]),
                codec=str(value["codec"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptShard(f"{what}: metadata field 'frames' is malformed ({e!r})") from e
        check_frames_shape(info.shape, info.raw_bytes, info.dtype, what)
        if len(info.frame_sizes) != info.shape[0] or min(info.frame_sizes) < 4:
            raise CorruptShard(
                f"{what}: {len(info.frame_sizes)} JPEG frame sizes (smallest {min(info.frame_sizes, default=0)}) "
                f"for {info.shape[0]} frames"
            )
        if info.subsampling not in _PIL_SUBSAMPLING:
            raise CorruptShard(f"{what}: unknown JPEG subsampling {info.subsampling!r}")
        return info


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


class JpegEncoder:
    """Encodes chunks of frames, one JPEG each, handing the bytes to ``write`` as they come."""

    def __init__(
        self, write: Callable[[bytes], object], *, quality: int, what: str, psnr_every: int = PSNR_EVERY
    ):
        self._write = write
        self._quality = check_quality(quality)
        self._what = what
        self._psnr_every = psnr_every
        self._frame_shape: tuple[int, int, int] | None = None
        self._sizes: list[int] = []
        self._sse = 0.0  # summed squared error of the measured frames
        self._measured = 0

    def add(self, chunk: np.ndarray) -> None:
        chunk = check_chunk(chunk, self._frame_shape, len(self._sizes), self._what)
        self._frame_shape = chunk.shape[1:]
        for frame in chunk:
            data = encode_jpeg(frame, self._quality)
            if len(self._sizes) % self._psnr_every == 0:
                decoded = decode_jpeg(data, frame.shape, f"{self._what}: frame {len(self._sizes)} as encoded")
                self._sse += float(np.square(decoded.astype(np.float64) - frame).sum())
                self._measured += 1
            self._write(data)
            self._sizes.append(len(data))

    def finish(self) -> JpegFramesInfo:
        if not self._sizes:
            raise no_frames(self._what)
        shape = (len(self._sizes), *self._frame_shape)
        mse = self._sse / (self._measured * int(np.prod(self._frame_shape)))
        return JpegFramesInfo(
            shape=shape,
            quality=self._quality,
            frame_sizes=tuple(self._sizes),
            psnr_frames=self._measured,
            psnr_mse=mse,
            raw_bytes=int(np.prod(shape)),
        )


def encode_jpeg(frame: np.ndarray, quality: int, subsampling: str = SUBSAMPLING) -> bytes:
    """One (H, W, 3) uint8 frame as a baseline JFIF JPEG (optimized Huffman tables: same decode, fewer bytes)."""
    out = io.BytesIO()
    Image.fromarray(frame, "RGB").save(
        out, "JPEG", quality=quality, subsampling=_PIL_SUBSAMPLING[subsampling], optimize=True
    )
    return out.getvalue()


def decode_jpeg(data: bytes, frame_shape: tuple[int, int, int], what: str) -> np.ndarray:
    """One JPEG to (H, W, 3) uint8; anything but a whole RGB JPEG of that size raises ``CorruptShard``."""
    if not (data.startswith(_SOI) and data.endswith(_EOI)):
        raise CorruptShard(
            f"{what}: not a whole JPEG (starts {data[:2].hex()}, ends {data[-2:].hex()}; want ffd8 ... ffd9)"
        )
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            image.load()
            if image.mode != "RGB" or (image.height, image.width, 3) != tuple(frame_shape):
                raise CorruptShard(
                    f"{what}: JPEG is {image.mode} {image.height}x{image.width}, metadata says RGB "
                    f"{frame_shape[0]}x{frame_shape[1]}"
                )
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise CorruptShard(f"{what}: libjpeg cannot decode it: {e}") from e


def split_frames(data: bytes, info: JpegFramesInfo, what: str) -> list[bytes]:
    """The JPEG of each frame of a whole member, by the recorded sizes."""
    if len(data) != sum(info.frame_sizes):
        raise CorruptShard(
            f"{what}: member has {len(data)} bytes, its {len(info.frame_sizes)} JPEG frames add up to "
            f"{sum(info.frame_sizes)}"
        )
    offsets = np.concatenate([[0], np.cumsum(info.frame_sizes)])
    return [data[a:b] for a, b in itertools.pairwise(offsets)]


def decode_jpeg_frames(
    source: object,
    info: JpegFramesInfo,
    *,
    what: str,
    chunk_frames: int = 8,
    out: np.ndarray | None = None,
    on_end: Callable[[], None] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the frames of one member in chunks, as ``shards.frame_codec.decode_frames`` does for zstd.

    ``source.read(n)`` returns the member's bytes; a frame that does not decode names its index.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if out is not None and (out.shape != info.shape or out.dtype != np.uint8 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {info.shape}")
    total = info.shape[0]
    position = 0
    for start in range(0, total, chunk_frames):
        n = min(chunk_frames, total - start)
        chunk = out[start : start + n] if out is not None else np.empty((n, *info.frame_shape), np.uint8)
        for i in range(n):
            size = info.frame_sizes[start + i]
            data = source.read(size)
            where = f"{what}: JPEG frame {start + i} at byte {position}"
            if len(data) != size:
                raise CorruptShard(f"{where}: member ends after {position + len(data)} bytes")
            chunk[i] = decode_jpeg(data, info.frame_shape, where)
            position += size
        if start + n == total:
            if source.read(1):
                raise CorruptShard(
                    f"{what}: member holds more bytes than its {total} JPEG frames ({position})"
                )
            if on_end is not None:
                on_end()
        yield chunk
