"""Real clips in every common container and codec, made with the imageio-ffmpeg binary.

The conformance tests (``tests/pipeline/test_conformance.py``) and the encode benchmark decode
these and compare with FFmpeg's own decode. Containers of the clips' own H.264 are stream copies
(the real bitstream, B-frames and all); the other codecs are re-encodes of the first seconds of a
real clip at a small size, which keeps the whole set to a few seconds of encoding. Each variant
is one ffmpeg command, so what a file is is written next to its name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.sample_videos import _ffmpeg, sample_clip

_SMALL = ["-t", "4", "-vf", "scale=320:136", "-an"]  # 4 s of bikes at 320x136: 100 frames


@dataclass(frozen=True)
class Variant:
    name: str  # file name: the extension picks the container
    what: str
    args: tuple[str, ...]  # ffmpeg arguments between the input and the output
    input_args: tuple[str, ...] = ()


VARIANTS = [
    Variant("h264_bframes.ts", "H.264 with B-frames in MPEG-TS (stream copy)", ("-c", "copy", "-an")),
    Variant("h264_bframes.mkv", "H.264 in Matroska (stream copy)", ("-c", "copy", "-an")),
    Variant("h264_bframes.mov", "H.264 in QuickTime (stream copy)", ("-c", "copy", "-an")),
    Variant("h264_bframes.avi", "H.264 with B-frames in AVI: no presentation times (stream copy)",
            ("-c", "copy", "-an", "-bsf:v", "h264_mp4toannexb")),
    Variant("h264_fragmented.mp4", "fragmented MP4 (stream copy)",
            ("-c", "copy", "-an", "-movflags", "frag_keyframe+empty_moov")),
    Variant("h264_editlist.mp4", "an edit list that starts inside a GOP (stream copy from 1.5 s)",
            ("-c", "copy", "-an"), ("-ss", "1.5")),
    Variant("h264_rotated.mp4", "phone-style rotation metadata, 90 degrees (stream copy)",
            ("-c", "copy", "-an"), ("-display_rotation:v", "90")),
    Variant("h264_rotated_180.mp4", "rotation metadata, 180 degrees (stream copy)",
            ("-c", "copy", "-an"), ("-display_rotation:v", "180")),
    Variant("h264_rotated_270.mkv", "rotation metadata, 270 degrees, in Matroska (stream copy)",
            ("-c", "copy", "-an"), ("-display_rotation:v", "270")),
    Variant("h264_open_gop.mp4", "H.264 open GOPs (non-IDR keyframes, leading B-frames)",
            (*_SMALL, "-c:v", "libx264", "-x264-params", "open-gop=1:keyint=30:bframes=3")),
    Variant("h264_no_bframes.mkv", "H.264 without B-frames",
            (*_SMALL, "-c:v", "libx264", "-bf", "0", "-g", "30")),
    Variant("h264_vfr.mkv", "variable frame rate (every third frame after the first 30)",
            ("-t", "4", "-an", "-vf", "scale=320:136,select='not(mod(n\\,3))+lt(n\\,30)'",
             "-fps_mode", "vfr", "-c:v", "libx264")),
    Variant("mpeg1.mpg", "MPEG-1 in MPEG-PS, open GOPs with B-frames",
            (*_SMALL, "-c:v", "mpeg1video", "-bf", "2", "-g", "15", "-q:v", "4", "-f", "mpeg")),
    Variant("mpeg2.ts", "MPEG-2 in MPEG-TS with B-frames",
            (*_SMALL, "-c:v", "mpeg2video", "-bf", "2", "-g", "15", "-q:v", "4", "-f", "mpegts")),
    Variant("mpeg4.avi", "MPEG-4 part 2 in AVI with B-frames",
            (*_SMALL, "-c:v", "mpeg4", "-bf", "2", "-g", "30", "-q:v", "4")),
    Variant("hevc_bframes.mkv", "HEVC with B-frames in Matroska",
            (*_SMALL, "-c:v", "libx265", "-x265-params", "log-level=error:keyint=30:bframes=3")),
    Variant("hevc_open_gop.mkv", "HEVC open GOPs (CRA keyframes)",
            (*_SMALL, "-c:v", "libx265", "-x265-params", "log-level=error:keyint=30:bframes=3:open-gop=1")),
    Variant("hevc_10bit.mp4", "HEVC Main 10 (yuv420p10le) in MP4",
            (*_SMALL, "-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-tag:v", "hvc1",
             "-x265-params", "log-level=error:keyint=30")),
    Variant("vp9.webm", "VP9 in WebM", (*_SMALL, "-c:v", "libvpx-vp9", "-deadline", "realtime",
                                        "-cpu-used", "8", "-g", "30")),
    Variant("av1.mp4", "AV1 in MP4", (*_SMALL, "-c:v", "libsvtav1", "-preset", "12", "-g", "30",
                                      "-svtav1-params", "log-level=0")),
    Variant("av1.mkv", "AV1 in Matroska", (*_SMALL, "-c:v", "libsvtav1", "-preset", "12", "-g", "30",
                                           "-svtav1-params", "log-level=0")),
]


def make_variants(folder, names: list[str] | None = None, clip: str = "bikes.mp4") -> dict[str, Path]:
    """Write the variants (all, or those named) of a real clip into ``folder``; ``{name: path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = sample_clip(clip)
    out = {}
    for v in VARIANTS:
        if names is None or v.name in names:
            out[v.name] = folder / v.name
            if not out[v.name].exists():
                _ffmpeg(*v.input_args, "-i", str(source), *v.args, str(out[v.name]))
    return out


def loop_variant(path, folder, minutes: float, suffix: str | None = None) -> Path:
    """A variant (MP4, MKV or WebM: looping an MPEG-TS/PS input loses packets at the joins)
    looped by stream copy to ``minutes``, through Matroska, then remuxed into ``suffix``'s
    container (default: the variant's own)."""
    path, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    looped = folder / f"{path.stem}_{minutes:g}min.mkv"
    out = looped.with_name(f"{path.stem}_{minutes:g}min{suffix or path.suffix}")
    if not out.exists():
        seconds = float(_ffmpeg_duration(path))
        _ffmpeg("-stream_loop", str(max(1, round(minutes * 60 / seconds)) - 1), "-i", str(path),
                "-c", "copy", str(looped))
        if out != looped:
            _ffmpeg("-i", str(looped), "-c", "copy", str(out))
    return out


def _ffmpeg_duration(path: Path) -> float:
    from pipeline.probe import probe_video

    return probe_video(path).duration_s


def make_long_gop_loop(folder, minutes: float, container: str = "mpg", clip: str = "bikes.mp4") -> Path:
    """A long-GOP clip (one keyframe per 10 s clip, MPEG-1 for ``mpg``, else H.264) looped by stream
    copy to ``minutes``: the hour-long MPEG-PS/TS case, built in seconds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    codec = ["-c:v", "mpeg1video", "-q:v", "6", "-bf", "2", "-g", "250", "-f", "mpeg"] if container == "mpg" else \
        ["-c:v", "libx264", "-x264-params", "keyint=250:bframes=3"]
    unit = folder / f"long_gop_unit.{container}"
    if not unit.exists():
        _ffmpeg("-i", str(sample_clip(clip)), "-an", "-vf", "scale=160:68", *codec, str(unit))
    looped = folder / f"long_gop_{minutes:g}min.{container}"
    if not looped.exists():
        repeats = max(1, round(minutes * 60 / 10))  # the clip is 10 s
        _ffmpeg("-stream_loop", str(repeats - 1), "-i", str(unit), "-c", "copy", str(looped))
    return looped
