"""The pack step: every sample of a dataset to a sequence of at most SEQ_LEN tokens.

Packing is one global best-fit decision over all samples, so the job has a single unit; what
makes it a job is the same contract as every step: a config check against the dataset it was
computed from, an atomic commit, and a ledger `longshot status` can read.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from jobs.atomic import sha256_file
from jobs.cli import BadInput, add_run_options
from jobs.executors import make_executor
from jobs.job import Job, Unit
from jobs.runtime import RetryPolicy, print_report, run_job
from shards.manifest import MANIFEST_FILE
from shards.pack_stats import format_pack_stats, pack_stats
from shards.packing import DEFAULT_MAX_TOKENS, PackPlan, pack_index
from shards.reader import DatasetReader

PLAN_FILE = "packs.parquet"
# Part of the job's config: a plan made by another packer is a different plan, so a folder
# packed by an older version is refused (exit 4) rather than silently reused.
PACKER = "best-fit-decreasing + subset-sum tighten to the Martello-Toth L2 bound"


class PackJob(Job):
    name = "pack"

    def __init__(self, dataset_dir: Path, max_tokens: int, seed: int):
        dataset_dir = Path(dataset_dir).resolve()
        super().__init__({"dataset": str(dataset_dir), "max_tokens": max_tokens, "seed": seed,
                          "packer": PACKER,
                          "dataset_sha256": sha256_file(dataset_dir / MANIFEST_FILE)})
        self.dataset_dir = dataset_dir

    def plan(self) -> list[Unit]:
        return [Unit("packs")]

    def run_unit(self, unit: Unit, staging: Path) -> dict:
        reader = DatasetReader(self.dataset_dir)
        plan = pack_index(reader.index, self.config["max_tokens"], self.config["seed"])
        plan.write(staging / PLAN_FILE)
        stats = pack_stats(plan)
        return {k: v for k, v in stats.items() if not isinstance(v, dict)}

    def summary(self, final_result) -> str:
        return ""


def register(sub) -> None:
    p = sub.add_parser("pack", help="assign every sample of a dataset to a packed sequence",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", help="a dataset folder written by preprocess")
    p.add_argument("--out", help="where the plan goes (default: DATASET/packs)")
    p.add_argument("--seq-len", type=int, default=DEFAULT_MAX_TOKENS, help="tokens per sequence")
    p.add_argument("--seed", type=int, default=0, help="shuffles packs and samples within them")
    add_run_options(p)
    p.set_defaults(func=run, executor="inprocess")


def run(args) -> int:
    dataset = Path(args.dataset)
    if not (dataset / MANIFEST_FILE).exists():
        raise BadInput(f"{dataset}: not a dataset folder ({MANIFEST_FILE} missing; run preprocess)")
    out = Path(args.out) if args.out else dataset / "packs"
    job = PackJob(dataset, args.seq_len, args.seed)
    report = run_job(job, out, make_executor(args.executor, args.ray_address, args.workers),
                     force=args.force, retry=RetryPolicy(max_attempts=args.max_attempts),
                     progress=not args.no_progress)
    print_report(report)
    if not report.ok:
        if any("SampleTooLong" in reason for reason in report.failed.values()):
            print(f"a sample is longer than --seq-len {args.seq_len}: preprocess with "
                  f"--max-seq-tokens <= {args.seq_len}, or pack with a larger --seq-len")
        return report.exit_code
    print(format_pack_stats(pack_stats(PackPlan.read(out / PLAN_FILE))))
    return 0
