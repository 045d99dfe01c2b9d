"""The probe step: one unit per video reads its duration, rate, size and codec.

A unit's result is the VideoInfo (or the reason the video is unusable), kept in the ledger; the
finalize step writes them all to `probe.parquet`. Unusable inputs are results, not failures: the
job goes on and the encode step reports them in the error table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.job import Job, Unit
from pipeline.errors import InputError
from pipeline.manifest import SampleSpec
from pipeline.probe import ProbeLimits, VideoInfo, probe_video

PROBE_FILE = "probe.parquet"
_SCHEMA = pa.schema([("id", pa.string()), ("video", pa.string()), ("duration_s", pa.float64()),
                     ("fps", pa.float64()), ("n_frames", pa.int64()), ("width", pa.int64()),
                     ("height", pa.int64()), ("codec", pa.string()), ("size_bytes", pa.int64()),
                     ("error_reason", pa.string())])


def samples_digest(samples: list[SampleSpec]) -> str:
    """Identifies the input list inside a job's config, so a changed manifest is noticed."""
    blob = json.dumps([dataclasses.asdict(s) for s in samples], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ProbeJob(Job):
    name = "probe"

    def __init__(self, samples: list[SampleSpec], limits: ProbeLimits = ProbeLimits()):
        super().__init__({"samples": samples_digest(samples), "count": len(samples),
                          "limits": dataclasses.asdict(limits)})
        self.samples = samples
        self.limits = limits

    def plan(self) -> list[Unit]:
        return [Unit(s.id, {"id": s.id, "video": s.video}) for s in self.samples]

    def run_unit(self, unit: Unit, staging: Path) -> dict:
        try:
            info = probe_video(unit.payload["video"], self.limits, id=unit.payload["id"])
        except InputError as err:
            return {"error": err.as_row()}
        return {"info": dataclasses.asdict(info)}

    def finalize(self, results, staging, out_dir):
        rows = []
        for unit, result in results:
            row = {"id": unit.id, "video": unit.payload["video"], "error_reason": None}
            if "info" in result:
                row.update({k: v for k, v in result["info"].items() if k != "path"})
            else:
                row["error_reason"] = result["error"]["reason"]
            rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), staging / PROBE_FILE)
        errors = sum(1 for _, r in results if "error" in r)
        return {"videos": len(results), "unusable": errors}

    def summary(self, final_result) -> str:
        return (f"  probed {final_result['videos']} videos, "
                f"{final_result['unusable']} unusable (reasons in errors.parquet)")


def probe_results(results: list[tuple[Unit, dict]]) -> dict[str, VideoInfo | dict]:
    """id -> VideoInfo for usable videos, or the error row for unusable ones."""
    return {u.id: VideoInfo(**r["info"]) if "info" in r else r["error"] for u, r in results}
