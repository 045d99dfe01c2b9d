"""A job whose units write real files, for the runtime tests (also runnable as a subprocess)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from jobs.executors import make_executor
from jobs.job import Job, Unit
from jobs.runtime import RetryPolicy, print_report, run_job


def unit_bytes(seed: int, index: int) -> bytes:
    """Deterministic content of varying size, so truncation and swaps are visible."""
    size = 1000 + (index * 7919 + seed) % 50_000
    block = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


class WriteFilesJob(Job):
    """Each unit writes two files; units listed in `fail_dir` raise while a marker file exists."""

    name = "write-files"

    def plan(self):
        return [Unit(f"u{i:04d}", {"index": i}) for i in range(self.config["units"])]

    def run_unit(self, unit, staging):
        i = unit.payload["index"]
        fail_dir = self.config.get("fail_dir")
        if fail_dir and (Path(fail_dir) / unit.id).exists():
            raise RuntimeError(f"unit {unit.id} was told to fail")
        time.sleep(self.config.get("sleep", 0.0))
        data = unit_bytes(self.config["seed"], i)
        (staging / "parts").mkdir(parents=True, exist_ok=True)
        (staging / "parts" / f"{unit.id}.bin").write_bytes(data)
        (staging / "parts" / f"{unit.id}.json").write_text(json.dumps({"n": len(data)}))
        return {"bytes": len(data)}

    def finalize(self, results, staging, out_dir):
        total = sum(r["bytes"] for _, r in results)
        (staging / "manifest.json").write_text(json.dumps(
            {"units": [u.id for u, _ in results], "bytes": total}, sort_keys=True))
        return {"bytes": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--fail-dir")
    ap.add_argument("--executor", default="inprocess")
    ap.add_argument("--ray-address")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    config = {"units": a.units, "seed": a.seed, "sleep": a.sleep}
    if a.fail_dir:
        config["fail_dir"] = a.fail_dir
    report = run_job(WriteFilesJob(config), Path(a.out), make_executor(a.executor, a.ray_address),
                     force=a.force, retry=RetryPolicy(max_attempts=2, backoff_s=0.01),
                     progress=False)
    print_report(report)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
