"""The encode step: plan every sample against the token budget, then one unit writes one shard.

Planning (tokenize the text, choose fps, size and segments, group samples into units of similar
byte size) is a pure function of the samples, the probe table and the config, so it is recomputed
when needed (e.g. for the error table) rather than stored twice. A video split into segments
becomes one shard sample per segment (key `ID__sNNNN`), each carrying the sample's text.
The model's video layout (pipeline/video_layout.py) decides how the video sits in that text;
its per-group text (Qwen3-VL's times and markers) is stored with the ids and budgeted.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.decode_log import captured_decode_log
from jobs.job import Job, Unit
from jobs.runtime import job_state_dir
from pipeline.budget import BudgetConfig, plan_video
from pipeline.chat_formats import LONGSHOT, ChatFormat
from pipeline.decode import frame_timestamps, iter_frame_windows
from pipeline.errors import InputError
from pipeline.manifest import SampleSpec
from pipeline.probe import VideoInfo
from pipeline.text import encode_text, load_tokenizer, tokenize_turns
from pipeline.units import split_into_units
from pipeline.video_layout import BLOCK, GroupText, VideoLayout
from shards.frame_codecs import FrameCodec
from shards.jpeg_frames import DEFAULT_QUALITY
from shards.manifest import ShardSummary, write_manifest
from shards.writer import ShardWriter

ERRORS_FILE = "errors.parquet"
DECODE_LOGS = "logs"  # DATA/logs/UNIT.decode.log: FFmpeg's lines for inputs with decode problems
ERRORS_SCHEMA = pa.schema([("id", pa.string()), ("input", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string())])
_STAGE_ORDER = {"manifest": 0, "probe": 1, "text": 2, "plan": 3, "decode": 4}


@dataclass(frozen=True)
class EncodeConfig:
    budget: BudgetConfig = BudgetConfig()
    zstd_level: int = 1  # level 1, not 3: 2.5x less CPU per frame for 8-17% more bytes (RESULTS.md)
    frame_delta: bool = False
    shard_bytes: int = 256 << 20  # target stored bytes per shard (one unit of work)
    compression_ratio: float = 1.5  # for the size estimate only; measured in tests/bench/RESULTS.md
    decode_window: int = 32  # frames decoded at once: bounds a worker's memory
    frame_codec: str = "zstd"  # or "jpeg" (lossy, ~5-10x fewer bytes; shards/jpeg_frames.py)
    jpeg_quality: int = DEFAULT_QUALITY

    @property
    def codec(self) -> FrameCodec:
        """The shard writer's frame codec; raises ValueError for an unknown codec or bad setting."""
        return FrameCodec(self.frame_codec, zstd_level=self.zstd_level, frame_delta=self.frame_delta,
                          jpeg_quality=self.jpeg_quality)

    @property
    def size_ratio(self) -> float:
        """Raw frame bytes per stored byte, for sizing units (JPEG: 7-11x measured, RESULTS.md)."""
        return self.compression_ratio if self.frame_codec == "zstd" else JPEG_SIZE_RATIO

    def job_config(self) -> dict:
        """What the job's config hash covers; the zstd default leaves the codec fields out, so
        datasets made before frame codecs keep their hash and resume."""
        config = dataclasses.asdict(self)
        if self.frame_codec == "zstd":
            del config["frame_codec"], config["jpeg_quality"]
        return config


JPEG_SIZE_RATIO = 6.0


def dataset_video_layout(data_dir: str | Path) -> str | None:
    """The video layout a dataset folder was encoded with (None: no encode job recorded there)."""
    meta = job_state_dir(Path(data_dir), EncodeJob.name) / "job.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text())["config"].get("video_layout", BLOCK.name)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class EncodeJob(Job):
    name = "encode"

    def __init__(self, samples: list[SampleSpec], probed: dict[str, VideoInfo | dict],
                 tokenizer_path: str, cfg: EncodeConfig, earlier_errors: list[dict],
                 samples_digest: str, chat_format: ChatFormat = LONGSHOT, video_layout: VideoLayout = BLOCK):
        config = {"encode": cfg.job_config(), "samples": samples_digest,
                  "tokenizer": file_digest(tokenizer_path)}
        if chat_format != LONGSHOT:  # the default stays out: datasets made before formats keep their hash
            config["chat_format"] = chat_format.to_dict()
        if video_layout != BLOCK:  # likewise
            config["video_layout"] = video_layout.name
        super().__init__(config)
        self.chat_format = chat_format
        self.video_layout = video_layout
        self.samples = samples
        self.probed = probed
        self.tokenizer_path = str(tokenizer_path)
        self.cfg = cfg
        self.earlier_errors = earlier_errors
        self._tokenizer = None
        self._group_text = None

    def __getstate__(self):  # the tokenizer is rebuilt in each worker, not pickled
        state = dict(self.__dict__)
        state["_tokenizer"] = state["_group_text"] = None
        return state

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path, self.chat_format)
        return self._tokenizer

    @property
    def group_text(self) -> GroupText:
        if self._group_text is None:
            self._group_text = GroupText(self.video_layout, self.chat_format,
                                         functools.partial(encode_text, self.tokenizer),
                                         self.cfg.budget.temporal_patch)
        return self._group_text

    def _tokenize(self, turns):
        return tokenize_turns(self.tokenizer, turns, fmt=self.chat_format, layout=self.video_layout)

    def planned_segments(self) -> tuple[list[dict], list[dict]]:
        """(segment descriptors in sample order, error rows of the text and plan stages)."""
        segments, errors = [], []
        for spec in self.samples:
            info = self.probed.get(spec.id)
            if not isinstance(info, VideoInfo):
                continue  # unusable video: its probe error is already in earlier_errors
            try:
                text = self._tokenize(spec.turns)
                plan = plan_video(info, len(text.ids), self.cfg.budget, id=spec.id,
                                  extra_tokens=self.group_text.extra_tokens)
            except InputError as err:
                err.id = spec.id
                errors.append(err.as_row())
                continue
            split = len(plan.segments) > 1
            for seg in plan.segments:
                raw = len(seg.frame_indices) * plan.height * plan.width * 3
                segments.append({
                    "key": f"{spec.id}__s{seg.index:04d}" if split else spec.id,
                    "id": spec.id, "video": spec.video, "turns": spec.turns,
                    "segment": {"index": seg.index, "count": len(plan.segments),
                                "t_start": seg.t_start, "t_end": seg.t_end},
                    "frame_indices": list(seg.frame_indices), "timestamps": list(seg.timestamps),
                    "height": plan.height, "width": plan.width, "sample_fps": plan.sample_fps,
                    "src_fps": info.fps, "vision_tokens": seg.vision_tokens,
                    "est_bytes": int(raw / self.cfg.size_ratio),
                })
        return segments, errors

    def plan(self) -> list[Unit]:
        segments, _ = self.planned_segments()
        by_key = {s["key"]: s for s in segments}
        groups = split_into_units([(s["key"], s["est_bytes"]) for s in segments],
                                  self.cfg.shard_bytes)
        return [Unit(f"shard-{i:06d}", {"samples": [by_key[k] for k in keys]})
                for i, keys in enumerate(groups)]

    def run_unit(self, unit: Unit, staging: Path) -> dict:
        shard_dir = staging / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        errors = []
        with captured_decode_log(staging / DECODE_LOGS / f"{unit.id}.decode.log") as decode_warnings, \
                ShardWriter(shard_dir / f"{unit.id}.tar", shard_dir / f"{unit.id}.parquet",
                            zstd_level=self.cfg.zstd_level, frame_delta=self.cfg.frame_delta,
                            frame_codec=self.cfg.frame_codec, jpeg_quality=self.cfg.jpeg_quality) as w:
            for seg in unit.payload["samples"]:
                try:
                    self._write_sample(w, seg)
                except InputError as err:
                    err.id = seg["id"]
                    errors.append(err.as_row())
            summary = w.close()
        return {"shard": summary.name, "samples": summary.samples, "tokens": summary.tokens,
                "bytes": summary.bytes, "tar_sha256": summary.tar_sha256,
                "index_sha256": summary.index_sha256, "errors": errors,
                "decode_warnings": list(decode_warnings)}

    def _write_sample(self, writer: ShardWriter, seg: dict) -> None:
        text = self._tokenize(seg["turns"])
        # the layout's per-group text at the planned frame times (what the budget counted)
        ids, mask, vision_at = self.group_text.expand(np.asarray(text.ids, dtype=np.int32),
                                                      np.asarray(text.loss_mask, dtype=bool),
                                                      text.vision_at, seg["timestamps"])
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        meta = {k: seg[k] for k in ("id", "video", "segment", "frame_indices", "timestamps",
                                    "height", "width", "sample_fps", "src_fps", "vision_tokens",
                                    "turns")}
        meta.update(text_tokens=len(ids), tokens=int(len(ids) + seg["vision_tokens"]),
                    vision_at=list(vision_at) if isinstance(vision_at, tuple) else int(vision_at),
                    loss_spans=edges.reshape(-1, 2).tolist(),
                    duration_s=float(seg["segment"]["t_end"] - seg["segment"]["t_start"]),
                    # presentation times, not index / fps: variable-rate video exists
                    timestamps=frame_timestamps(seg["video"], seg["frame_indices"], id=seg["id"]))
        frames = iter_frame_windows(seg["video"], seg["frame_indices"], seg["height"], seg["width"],
                                    window=self.cfg.decode_window)
        writer.add(seg["key"], meta, frames, ids)

    def finalize(self, results, staging, out_dir):
        summaries = [ShardSummary(name=r["shard"], tar_path=out_dir / "shards" / f"{r['shard']}.tar",
                                  index_path=out_dir / "shards" / f"{r['shard']}.parquet",
                                  samples=r["samples"], tokens=r["tokens"], bytes=r["bytes"],
                                  tar_sha256=r["tar_sha256"], index_sha256=r["index_sha256"])
                     for _, r in results]
        write_manifest(out_dir, summaries, path=staging / "dataset.parquet")
        _, plan_errors = self.planned_segments()
        errors = self.earlier_errors + plan_errors + [e for _, r in results for e in r["errors"]]
        errors.sort(key=lambda e: (_STAGE_ORDER.get(e["stage"], 9), e["input"], e["id"] or ""))
        pq.write_table(pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA), staging / ERRORS_FILE)
        return {"shards": len(summaries), "samples": sum(s.samples for s in summaries),
                "tokens": sum(s.tokens for s in summaries),
                "bytes": sum(s.bytes for s in summaries), "errors": len(errors),
                "decode_warnings": [w for _, r in results for w in r.get("decode_warnings", [])],
                "log_dir": str(out_dir / DECODE_LOGS)}

    def summary(self, r) -> str:
        lines = [(f"  wrote {r['samples']} samples, {r['tokens']:,} tokens, "
                  f"{r['bytes'] / 2**20:.1f} MiB in {r['shards']} shards; "
                  f"{r['errors']} inputs in errors.parquet")]
        warnings = r.get("decode_warnings", [])
        lines += [f"  {w}" for w in warnings]
        if warnings:
            lines.append(f"  decoder details: {r['log_dir']}")
        return "\n".join(lines)
