"""`longshot preprocess`: manifest -> probe job -> encode job -> a dataset folder with statistics."""
from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

from jobs.cli import BadInput, add_run_options, resolve_chat_format
from jobs.executors import make_executor
from jobs.runtime import RetryPolicy, print_report, run_job
from jobs.steps.encode import EncodeConfig, EncodeJob
from jobs.steps.probe import PROBE_FILE, ProbeJob, samples_digest
from pipeline.budget import BudgetConfig
from pipeline.manifest import read_manifest, read_video_folder
from pipeline.probe import VideoInfo
from shards.frame_codecs import CODECS, FrameCodec
from shards.stats import compute_stats, format_table, write_stats

_INFO_FIELDS = ("duration_s", "fps", "n_frames", "width", "height", "codec", "size_bytes")


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="probe, budget, decode and shard the videos of a manifest",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="JSONL, one sample a line: id, video, text|conversations")
    src.add_argument("--video-dir", help="a folder of videos with NAME.txt / NAME.json sidecars")
    p.add_argument("--tokenizer", required=True, help="a HuggingFace tokenizer.json")
    p.add_argument("--out", required=True, help="the dataset folder to write")
    p.add_argument("--chat-format", help="longshot | qwen | a JSON file (default: the tokenizer "
                   "folder's chat_format.json, else longshot)")
    p.add_argument("--preset", help="the model the data is for: its patch size, temporal patch and "
                   "merge size set the token budget, its video layout the text around the video "
                   "(e.g. from-hf:DIR; default: patch 14, 2 frames, 2x2, one block)")
    d = BudgetConfig()
    p.add_argument("--max-seq-tokens", type=int, default=d.max_seq_tokens)
    p.add_argument("--fps", type=float, default=d.fps, help="sampling rate to start from")
    p.add_argument("--min-fps", type=float, default=d.min_fps, help="lowest rate before shrinking")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest frame area")
    p.add_argument("--min-pixels", type=int, default=d.min_pixels, help="smallest frame area")
    p.add_argument("--overflow", choices=["split", "refuse"], default=d.overflow,
                   help="what to do with a video that does not fit at the floors")
    e = EncodeConfig()
    p.add_argument("--zstd-level", type=int, default=e.zstd_level)
    p.add_argument("--frame-delta", action="store_true", help="store frame differences (zstd only)")
    p.add_argument("--frame-codec", choices=CODECS, default=e.frame_codec,
                   help="how frames are stored: zstd (lossless) or jpeg (lossy, 5-10x smaller; "
                   "PSNR against the source in the statistics)")
    p.add_argument("--jpeg-quality", type=int, default=e.jpeg_quality, help="JPEG quality 1-100 (jpeg codec)")
    p.add_argument("--shard-mb", type=int, default=e.shard_bytes >> 20, help="target shard size")
    add_run_options(p)
    p.set_defaults(func=run)


def _read_samples(args):
    source = Path(args.manifest or args.video_dir)
    if not source.exists():
        raise BadInput(f"{source}: no such {'manifest' if args.manifest else 'folder'}")
    if not Path(args.tokenizer).is_file():
        raise BadInput(f"{args.tokenizer}: tokenizer file not found")
    return read_manifest(source) if args.manifest else read_video_folder(source)


def _probed(out: Path) -> tuple[dict, list[dict]]:
    probed, errors = {}, []
    for row in pq.read_table(out / PROBE_FILE).to_pylist():
        if row["error_reason"] is None:
            probed[row["id"]] = VideoInfo(path=row["video"], **{k: row[k] for k in _INFO_FIELDS})
        else:
            errors.append({"id": row["id"], "input": row["video"], "stage": "probe",
                           "reason": row["error_reason"]})
    return probed, errors


def _patch_geometry(preset_name: str | None) -> dict:
    """BudgetConfig's patch fields from the model the data is for (none: the defaults)."""
    if preset_name is None:
        return {}
    from model.presets import preset

    try:
        v = preset(preset_name).vision
    except (KeyError, ValueError) as exc:
        raise BadInput(f"--preset {preset_name}: {exc}") from None
    return {"patch": v.patch, "temporal_patch": v.temporal_patch, "merge": v.merge}


def _video_layout(preset_name: str | None):
    """How the model the data is for was shown videos (none: longshot's block layout)."""
    from pipeline.video_layout import BLOCK, video_layout

    if preset_name is None:
        return BLOCK
    from model.presets import preset

    try:
        return video_layout(preset(preset_name).video_layout)
    except (KeyError, ValueError) as exc:
        raise BadInput(f"--preset {preset_name}: {exc}") from None


def _check_codec(args) -> None:
    """Refuse bad codec settings (e.g. --frame-delta with jpeg) before any work starts."""
    try:
        FrameCodec(args.frame_codec, zstd_level=args.zstd_level, frame_delta=args.frame_delta,
                   jpeg_quality=args.jpeg_quality)
    except ValueError as exc:
        raise BadInput(f"frame codec: {exc}") from None


def run(args) -> int:
    _check_codec(args)
    samples, manifest_errors = _read_samples(args)
    out = Path(args.out)
    retry = RetryPolicy(max_attempts=args.max_attempts)

    def execute(job):
        executor = make_executor(args.executor, args.ray_address, args.workers)
        report = run_job(job, out, executor, force=args.force, retry=retry,
                         progress=not args.no_progress)
        print_report(report, job.summary(report.final_result) if report.ok else "")
        return report

    probe = ProbeJob(samples)
    report = execute(probe)
    if not report.ok:
        return report.exit_code
    probed, probe_errors = _probed(out)
    cfg = EncodeConfig(
        budget=BudgetConfig(max_seq_tokens=args.max_seq_tokens, fps=args.fps, min_fps=args.min_fps,
                            max_pixels=args.max_pixels, min_pixels=args.min_pixels,
                            overflow=args.overflow, **_patch_geometry(args.preset)),
        zstd_level=args.zstd_level, frame_delta=args.frame_delta, shard_bytes=args.shard_mb << 20,
        frame_codec=args.frame_codec, jpeg_quality=args.jpeg_quality)
    encode = EncodeJob(samples, probed, args.tokenizer, cfg,
                       [e.as_row() for e in manifest_errors] + probe_errors, samples_digest(samples),
                       chat_format=resolve_chat_format(args.chat_format, args.tokenizer),
                       video_layout=_video_layout(args.preset))
    report = execute(encode)
    if not report.ok:
        return report.exit_code
    stats = compute_stats(out)
    written = write_stats(out, stats)
    print(format_table(stats))
    print(f"statistics: {', '.join(str(p) for p in written)}")
    return 0
