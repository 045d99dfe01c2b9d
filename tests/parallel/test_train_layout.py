"""The train job on a layout, launched as ranks by `--nproc` (torchrun): context parallel 2 with
expert parallel 2 across the same two processes, DSA with an indexer warm-up step; a run resumed
from its middle checkpoint continues with the very same losses."""
import os
import shutil
import subprocess
import sys

from jobs.steps.train_metrics import read_metrics

ARGS = ["--synthetic", "4", "--seq-len", "160", "--steps", "4", "--save-every", "2",
        "--attention", "dsa", "--dsa-warmup-steps", "1", "--dsa-topk", "16", "--lr", "2e-3",
        "--lr-warmup-steps", "1", "--workers", "0", "--cp", "2", "--ep", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def longshot(*args):
    res = subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=ENV, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def numbers(records):
    return [(r["step"], r["loss"], r["ce"], r["aux"], r["indexer"], r["grad_norm"], r["lr"])
            for r in records]


def test_resumed_layout_run_repeats_its_losses(tmp_path):
    straight = tmp_path / "straight"
    longshot("train", "--run", str(straight), "--nproc", "2", *ARGS)
    want = numbers(read_metrics(straight))
    assert [w[0] for w in want] == [1, 2, 3, 4]

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "iter_0000004")
    (resumed / "checkpoints" / "latest").write_text("2")
    out = longshot("resume", str(resumed), "--nproc", "2")
    assert "resumed from" in out.stdout and "step 2" in out.stdout
    assert numbers(read_metrics(resumed)) == want
