"""`longshot eval`: needle-in-a-haystack retrieval of a trained model, by length, depth and
attention arm (dense, DSA token, DSA block).

A unit is one cell (arm, length, depth) with its needles. The needles and their haystacks
depend on (seed, length, depth, needle) only, so every arm answers the very same documents;
the seed is drawn at random for a new output folder (fresh needles every evaluation) and kept
in its config, so a killed evaluation resumes with the same needles; --seed repeats a run.
Each cell writes cells/ARM_LLENGTH_dDEPTH.parquet (one row per needle); the end of the job
joins them into results.parquet, draws heatmap_ARM.png (accuracy, depth x length) and prints
the accuracy of each arm by length, averaged over depths, and its share of dense's.
"""
from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.atomic import sha256_file
from jobs.cli import BadInput, add_run_options, resolve_chat_format
from jobs.executors import make_executor
from jobs.job import Job, Unit
from jobs.runtime import RetryPolicy, job_state_dir, print_report, run_job
from jobs.steps.eval_model import ARMS, block_rule_fields, checkpoint_state, loaded_model, resolve_checkpoint
from shards.manifest import MANIFEST_FILE

RESULTS = "results.parquet"
DEFAULT_DEPTHS = tuple(range(0, 101, 10))


def cell_id(arm: str, length: int, depth: int) -> str:
    return f"{arm}_L{length}_d{depth:03d}"


def needle_rng(seed: int, length: int, depth: int, i: int, what: int) -> np.random.Generator:
    """The random stream of needle i of a (length, depth) cell: what=0 the needle, 1 its haystack."""
    return np.random.default_rng([seed, length, depth, i, what])


class EvalJob(Job):
    name = "eval"
    unit_cpus = 2.0

    def __init__(self, *, checkpoints: dict[str, str], dataset: Path, tokenizer: Path, chat_format,
                 lengths: list[int], depths: list[int], needles: int, seed: int, block_rule: str | None = None):
        dataset, tokenizer = Path(dataset).resolve(), Path(tokenizer).resolve()
        super().__init__({
            "checkpoints": checkpoints, "dataset": str(dataset),
            "dataset_sha256": sha256_file(dataset / MANIFEST_FILE), "tokenizer": str(tokenizer),
            "tokenizer_sha256": sha256_file(tokenizer), "chat_format": chat_format.to_dict(),
            "lengths": list(lengths), "depths": list(depths), "needles": needles, "seed": seed,
            **({"block_rule": block_rule} if block_rule else {}),
            "checkpoint_sha256": {arm: _manifest_digest(Path(p)) for arm, p in checkpoints.items()}})
        self.chat_format = chat_format

    def plan(self) -> list[Unit]:
        c = self.config
        return [Unit(cell_id(arm, length, depth), {"arm": arm, "length": length, "depth": depth})
                for arm in c["checkpoints"] for length in c["lengths"] for depth in c["depths"]]

    def run_unit(self, unit: Unit, staging: Path) -> dict:
        from tokenizers import Tokenizer

        from model.retrieval.haystack import RealSamples, needle_document, retrieval_batch
        from model.retrieval.needles import make_needle
        from model.retrieval.score import score_answer
        from shards.load_patches import PatchGeometry

        arm, length, depth = unit.payload["arm"], unit.payload["length"], unit.payload["depth"]
        em = loaded_model(Path(self.config["checkpoints"][arm]))
        em.set_arm(arm, self.config.get("block_rule"))
        v = em.model_cfg.vision
        geometry = PatchGeometry(v.patch, v.temporal_patch, v.merge)
        tokenizer = Tokenizer.from_file(self.config["tokenizer"])
        samples = RealSamples(self.config["dataset"], tokenizer, self.chat_format, geometry)
        rows = []
        for i in range(self.config["needles"]):
            needle = make_needle(needle_rng(self.config["seed"], length, depth, i, 0))
            doc = needle_document(samples, needle, depth / 100, length,
                                  needle_rng(self.config["seed"], length, depth, i, 1))
            batch = retrieval_batch([doc], vision_token_id=em.model_cfg.vision_token_id, geometry=geometry)
            score = score_answer(em.model, batch.to(em.device), doc.answer_at, doc.answer_len)
            rows.append({"arm": arm, "length": length, "depth": depth, "needle": i, "exact": score.exact,
                         "loglik": score.loglik, "tokens_right": score.tokens_right,
                         "answer_tokens": score.tokens, "name": needle.name, "code": needle.code,
                         "needle_pos": doc.fact_at / length})
        (staging / "cells").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), staging / "cells" / f"{unit.id}.parquet")
        return {"exact": sum(r["exact"] for r in rows), "needles": len(rows)}

    def finalize(self, results, staging: Path, out_dir: Path) -> dict:
        from jobs.steps.eval_report import heatmap, summary_rows

        table = pa.concat_tables([pq.read_table(out_dir / "cells" / f"{u.id}.parquet") for u, _ in results])
        pq.write_table(table, staging / RESULTS)
        for arm in self.config["checkpoints"]:
            heatmap(table, arm, staging / f"heatmap_{arm}.png")
        return {"summary": summary_rows(table)}

    def summary(self, final_result) -> str:
        from jobs.steps.eval_report import format_summary

        return format_summary(final_result["summary"]) if final_result else ""


def _manifest_digest(folder: Path) -> str | None:
    """The checkpoint's manifest digest: a checkpoint rewritten under the same name is another input."""
    manifest = folder / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else None


def _arm_checkpoints(args) -> dict[str, str]:
    """{arm: checkpoint folder} from --arms and --checkpoint / --arm-checkpoint ARM=PATH."""
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in arms:
        if arm not in ARMS:
            raise BadInput(f"--arms: unknown arm {arm!r}; choose among {', '.join(ARMS)}")
    given = {}
    for spec in args.arm_checkpoint or []:
        arm, sep, path = spec.partition("=")
        if not sep or arm not in ARMS:
            raise BadInput(f"--arm-checkpoint {spec!r}: expected ARM=PATH with ARM one of {', '.join(ARMS)}")
        given[arm] = path
    out = {}
    for arm in arms:
        path = given.get(arm, args.checkpoint)
        if path is None:
            raise BadInput(f"arm {arm}: give --checkpoint or --arm-checkpoint {arm}=PATH")
        out[arm] = str(resolve_checkpoint(path))
    return out


def _seed(args, out: Path) -> int:
    """--seed, else the seed of the evaluation already in `out` (a resumed run), else a fresh one."""
    if args.seed is not None:
        return args.seed
    meta = job_state_dir(out, EvalJob.name) / "job.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["config"]["seed"])
    return secrets.randbits(31)


def _ints(text: str, what: str) -> list[int]:
    """'32K,128K' -> [32768, 131072]."""
    values = []
    for item in text.split(","):
        item = item.strip().upper()
        if not item:
            continue
        try:
            values.append(int(item.removesuffix("K")) * (1024 if item.endswith("K") else 1))
        except ValueError:
            raise BadInput(f"{what} {text!r}: expected a comma-separated list of integers (32K = 32768)") from None
    if not values:
        raise BadInput(f"{what}: empty list")
    return values


def register(sub) -> None:
    p = sub.add_parser("eval", help="needle-in-a-haystack retrieval by length, depth and attention arm",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder: results.parquet, heatmap_ARM.png, cells/")
    p.add_argument("--checkpoint", help="a run folder (its latest checkpoint) or an iter_NNNNNNN folder, for every arm")
    p.add_argument("--arm-checkpoint", action="append", metavar="ARM=PATH",
                   help="another checkpoint for one arm (e.g. block=runs/block); repeatable")
    p.add_argument("--arms", default="dense,token,block", help="attention arms: dense, token, block")
    p.add_argument("--data", required=True, help="a dataset folder (real shards): the haystack's video and text")
    p.add_argument("--tokenizer", required=True, help="the tokenizer.json the model was trained with")
    p.add_argument("--chat-format", help="longshot | qwen | a JSON file (default: the tokenizer folder's, else longshot)")
    p.add_argument("--lengths", default="32K,128K,256K", help="document lengths in tokens")
    p.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)), help="needle depths, percent of the haystack")
    p.add_argument("--needles", type=int, default=4, help="needles per (length, depth) cell")
    p.add_argument("--seed", type=int, help="repeat the needles of an earlier evaluation (default: fresh ones)")
    p.add_argument("--block-rule", help="the block arm's key scoring instead of the model's: max, sum, pooled, "
                   "max+coarse2 (to compare rules on one checkpoint)")
    add_run_options(p)
    p.set_defaults(func=run, executor="inprocess")


def run(args) -> int:
    out = Path(args.out)
    data = Path(args.data)
    if not (data / MANIFEST_FILE).is_file():
        raise BadInput(f"{data}: not a dataset folder ({MANIFEST_FILE} missing; run preprocess)")
    if not Path(args.tokenizer).is_file():
        raise BadInput(f"{args.tokenizer}: tokenizer file not found")
    depths = _ints(args.depths, "--depths")
    if any(not 0 <= d <= 100 for d in depths):
        raise BadInput(f"--depths {args.depths!r}: each depth is a percent within 0..100")
    if args.needles < 1:
        raise BadInput("--needles must be at least 1")
    checkpoints = _arm_checkpoints(args)
    for arm, folder in checkpoints.items():
        stage = checkpoint_state(Path(folder)).get("stage", "dense")
        if arm != "dense" and stage == "dense":
            print(f"note: {folder} was trained with dense attention only: the {arm} arm selects keys "
                  "with an indexer that never trained")
    if args.block_rule:
        block_rule_fields(args.block_rule)  # refuses a bad rule before anything runs
    seed = _seed(args, out)
    job = EvalJob(checkpoints=checkpoints, dataset=data, tokenizer=Path(args.tokenizer),
                  chat_format=resolve_chat_format(args.chat_format, args.tokenizer),
                  lengths=_ints(args.lengths, "--lengths"), depths=depths, needles=args.needles, seed=seed,
                  block_rule=args.block_rule)
    print(f"eval: seed {seed} (run again with --seed {seed} for the same needles elsewhere)", flush=True)
    report = run_job(job, out, make_executor(args.executor, args.ray_address, args.workers), force=args.force,
                     retry=RetryPolicy(max_attempts=args.max_attempts), progress=not args.no_progress)
    print_report(report, job.summary(report.final_result) if report.ok else "")
    return report.exit_code
