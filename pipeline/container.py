"""What a video file's container says about it, read cheaply without decoding.

decord reports frames, fps and size but neither the codec nor why it refused a file. Both are
cheap to get from the container itself: its signature in the first bytes, and for MP4/MOV the box
tree (only box headers are read, plus the ``moov`` box that holds the track list). That lets the
probe tell "not a video" from "truncated or corrupt" from "no video stream", and report the codec.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

HEAD_BYTES = 1 << 20  # enough for every signature and for a Matroska header with its tracks
_MAX_MOOV_BYTES = 256 << 20  # a moov this large is not a video we want to read into memory

_MP4_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}

# Sample-entry fourccs of ISO/QuickTime video tracks, and Matroska CodecIDs, to one name each.
_MP4_CODECS = {
    b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc", b"av01": "av1",
    b"vp09": "vp9", b"vp08": "vp8", b"mp4v": "mpeg4", b"jpeg": "mjpeg", b"mjpa": "mjpeg",
    b"apch": "prores", b"apcn": "prores", b"apcs": "prores", b"apco": "prores", b"ap4h": "prores",
}
_MKV_CODECS = {
    "V_MPEG4/ISO/AVC": "h264", "V_MPEGH/ISO/HEVC": "hevc", "V_AV1": "av1", "V_VP9": "vp9",
    "V_VP8": "vp8", "V_MPEG4/ISO/ASP": "mpeg4", "V_MPEG4/ISO/SP": "mpeg4", "V_MJPEG": "mjpeg",
}
_MKV_CODEC_ID = re.compile(rb"\x86([\x81-\xfe])(V_[\x21-\x7e]+)")


@dataclass
class ContainerInfo:
    """``kind`` is None when no known signature matched; ``complete`` is False when a box runs past
    the end of the file (a truncated download); ``video_tracks`` lists codec names, one per video
    track (the container's own tag where the name is not known: what an "unsupported codec"
    error names), and is None where the container's track list was not parsed."""

    kind: str | None
    complete: bool = True
    has_index: bool = True
    video_tracks: list[str] | None = field(default=None)

    @property
    def codec(self) -> str:
        return self.video_tracks[0] if self.video_tracks else "unknown"


def read_container(f, size: int) -> ContainerInfo:
    """Inspect an open binary file of ``size`` bytes."""
    f.seek(0)
    head = f.read(HEAD_BYTES)
    kind = sniff_kind(head)
    if kind == "mp4":
        return _read_mp4(f, size)
    if kind == "matroska":
        return ContainerInfo(kind, video_tracks=_matroska_codecs(head) or None)
    return ContainerInfo(kind)


def sniff_kind(head: bytes) -> str | None:
    """The container family from the file signature, or None."""
    if len(head) >= 8 and head[4:8] in _MP4_TOP_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpeg-ts"
    return None


def _read_mp4(f, size: int) -> ContainerInfo:
    info = ContainerInfo("mp4", has_index=False)
    pos = 0
    while pos < size:
        box = top_box_at(f, pos, size)
        if box is None:
            info.complete = False
            break
        kind, payload, end = box
        if kind == b"moov":
            if end - payload > _MAX_MOOV_BYTES:
                info.complete = False
                break
            f.seek(payload)
            info.has_index = True
            info.video_tracks = _mp4_video_codecs(f.read(end - payload))
        pos = end
    return info


def top_box_at(f, pos: int, size: int):
    """``(type, payload start, end)`` of the top-level box at ``pos``, or None if it is cut off."""
    f.seek(pos)
    header = f.read(16)
    if len(header) < 8:
        return None
    length, kind = struct.unpack(">I4s", header[:8])
    payload = pos + 8
    if length == 1:
        if len(header) < 16:
            return None
        length = struct.unpack(">Q", header[8:16])[0]
        payload = pos + 16
    elif length == 0:
        length = size - pos
    end = pos + length
    if end < payload or end > size:
        return None
    return kind, payload, end


def child_boxes(buf: bytes, start: int, end: int):
    """Child boxes ``(type, payload start, end)`` inside ``buf[start:end]``; stops at damage."""
    pos = start
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", buf, pos)
        payload = pos + 8
        if length == 1 and pos + 16 <= end:
            length = struct.unpack_from(">Q", buf, pos + 8)[0]
            payload = pos + 16
        elif length == 0:
            length = end - pos
        if length < payload - pos or pos + length > end:
            return
        yield kind, payload, pos + length
        pos += length


def child_box(buf: bytes, start: int, end: int, kind: bytes):
    return next(((p, e) for k, p, e in child_boxes(buf, start, end) if k == kind), None)


def _mp4_video_codecs(moov: bytes) -> list[str]:
    codecs = []
    for kind, payload, end in child_boxes(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        mdia = child_box(moov, payload, end, b"mdia")
        hdlr = mdia and child_box(moov, *mdia, b"hdlr")
        # hdlr payload: version+flags (4), pre_defined (4), handler_type (4)
        if not hdlr or moov[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
            continue
        minf = child_box(moov, *mdia, b"minf")
        stbl = minf and child_box(moov, *minf, b"stbl")
        stsd = stbl and child_box(moov, *stbl, b"stsd")
        # stsd payload: version+flags (4), entry_count (4), then entries: size (4), format (4)
        fourcc = moov[stsd[0] + 12 : stsd[0] + 16] if stsd else b""
        codecs.append(_MP4_CODECS.get(fourcc) or fourcc.decode("latin-1").strip() or "unknown")
    return codecs


def _matroska_codecs(head: bytes) -> list[str]:
    codecs = []
    for match in _MKV_CODEC_ID.finditer(head):
        length = match.group(1)[0] & 0x7F
        codec_id = match.group(2)[:length].decode("ascii")
        codecs.append(_MKV_CODECS.get(codec_id, codec_id))
    return codecs
