"""Opening a video's stream with PyAV, and turning its failures into reasons a user can act on.

PyAV bundles the same FFmpeg libraries as the reference decoder (FFmpeg 9 in the ``av`` 19
wheel, whose dav1d decodes AV1), so the stream chosen, the frames shown and their timestamps are
FFmpeg's own. This module only opens: :mod:`pipeline.av_index` maps frames to packets and
:mod:`pipeline.av_decode` decodes them.

FFmpeg's log lines (one per damaged macroblock row, easily thousands per file) never reach the
console: decoding runs inside :func:`captured_logs`, and the caller reports one summary line per
input (:func:`summarize_logs`) with the details at debug level, which a job's log keeps.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter

import av

from pipeline.container import read_container
from pipeline.errors import InputError

log = logging.getLogger("longshot.decode")

# A log level must be set for FFmpeg's messages to reach PyAV's capture at all; outside a
# capture they go to Python's logging under "libav", quiet unless a handler asks for them.
av.logging.set_level(av.logging.WARNING)
logging.getLogger("libav").propagate = False
logging.getLogger("libav").addHandler(logging.NullHandler())


class VideoUnusable(Exception):
    """Why a file's video cannot be decoded: a short ``reason`` and the library's ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} [{detail}]" if detail else reason)
        self.reason, self.detail = reason, detail

    def as_input_error(self, cls: type[InputError], path: str, id: str | None) -> InputError:
        return cls(path, self.reason, id=id, detail=self.detail)


def open_video(path: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The container and its video stream (FFmpeg's best one), or :class:`VideoUnusable`.

    Reasons: "not a video" (FFmpeg finds no container), "no video stream", "unsupported codec
    NAME" (a video stream FFmpeg has no decoder for).
    """
    try:
        container = av.open(path)
    except PermissionError:
        raise VideoUnusable("permission denied") from None
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoUnusable("not a video", str(exc)) from None
    try:
        stream = _video_stream(container)
    except BaseException:
        container.close()
        raise
    stream.thread_type = "NONE"  # one thread: the encode step runs one task per core
    stream.codec_context.thread_count = 1
    return container, stream


def _video_stream(container):
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        raise VideoUnusable("no video stream")
    stream = container.streams.best("video") or videos[0]
    if stream.disposition & av.stream.Disposition.attached_pic:
        stream = videos[0]
    if stream.codec_context is None or not stream.codec_context.codec.is_decoder:
        raise VideoUnusable(f"unsupported codec {_codec_name(container, stream)}")
    return stream


def _codec_name(container, stream) -> str:
    """The codec's name: FFmpeg's where it knows the codec, else the container's own tag."""
    context = stream.codec_context
    if context is not None and context.codec is not None:
        return context.codec.canonical_name
    with open(container.name, "rb") as f:
        tracks = read_container(f, os.fstat(f.fileno()).st_size).video_tracks
    return tracks[0] if tracks else "unknown"


@contextlib.contextmanager
def captured_logs():
    """Collect FFmpeg's log lines of this thread instead of printing them; yields the list."""
    with av.logging.Capture(local=True) as logs:
        yield logs


_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")


def summarize_logs(name: str, logs, concealed: int = 0, details: logging.Logger = log) -> str | None:
    """One line for an input whose stored frames were hurt by decode errors, or None; every
    FFmpeg line goes to debug (the job's log).

    ``logs`` are PyAV's ``(level, logger, message)`` tuples; ``concealed`` counts stored frames
    the decoder flagged as corrupt (shown with errors concealed); ``details`` is the logger the
    lines go to. Errors that hurt no stored frame
    get no console line: entering an open GOP at its keyframe, as random access does, makes the
    H.264 decoder log reference errors about pictures that are never shown.
    """
    problems = [(lvl, who, msg.strip()) for lvl, who, msg in logs if lvl <= av.logging.WARNING]
    for lvl, who, msg in problems:
        details.debug("%s: [%s] %s", name, _ADDRESS.sub("", who or "ffmpeg"), msg)
    if not concealed:
        return None
    errors = sum(1 for lvl, _, _ in problems if lvl <= av.logging.ERROR)
    parts = [f"{concealed} frames concealed after decode errors"]
    if errors:
        parts.append(f"{errors} decoder errors")
    if len(problems) > errors:
        parts.append(f"{len(problems) - errors} decoder warnings")
    common = Counter(msg for _, _, msg in problems).most_common(1)
    tail = f" (most common: {common[0][0]!r})" if common else ""
    return f"{name}: {', '.join(parts)}{tail}"
