"""Training checkpoints: RUN/checkpoints/iter_NNNNNNN, committed atomically, and a `latest` pointer.

A checkpoint holds everything a resumed run needs to continue bit for bit: the model and the
distributed optimizer (Megatron dist_checkpointing, sharded over ranks), the LR schedule and the
data cursor (train_state.pt, rank 0), and every rank's RNG streams (rng/rank_R.pt).

Commit protocol (a SIGKILL at any instant leaves the previous checkpoint usable):
  1. every rank writes into iter_NNNNNNN.tmp (rank 0 first removes a stale one);
  2. rank 0 fsyncs the files and renames the folder to iter_NNNNNNN (atomic on POSIX);
  3. rank 0 atomically rewrites `latest` with the step; only then older checkpoints are pruned.
A reader trusts only `latest`; a folder without it (a kill between 2 and 3) is ignored and
overwritten on the next save of that step.
"""
from __future__ import annotations

import os
import queue
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from jobs.atomic import atomic_write_bytes, fsync_dir

LATEST = "latest"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    """Every random stream a training step may draw from, on this rank."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _in_process_write_queue() -> None:
    # Megatron's checkpoint writer reports results through a multiprocessing Manager queue, a
    # server process that would outlive a SIGKILLed trainer. Saves here are synchronous, so the
    # writer runs in this process and a thread-safe queue does the same job.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = max(1, keep)

    def path(self, step: int) -> Path:
        return self.root / f"iter_{step:07d}"

    def latest(self) -> int | None:
        try:
            step = int((self.root / LATEST).read_text().strip())
        except (OSError, ValueError):
            return None
        return step if self.path(step).is_dir() else None

    def steps(self) -> list[int]:
        out = []
        for p in self.root.glob("iter_*"):
            if p.is_dir() and not p.name.endswith(".tmp"):
                out.append(int(p.name[5:]))
        return sorted(out)

    def save(self, step: int, sharded_state: dict, train_state: dict) -> Path:
        """Collective: every rank calls it with its sharded state; rank 0's train_state is kept."""
        from megatron.core import dist_checkpointing

        _in_process_write_queue()
        tmp = self.root / f"iter_{step:07d}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(self.path(step), ignore_errors=True)  # a dir `latest` never pointed to
            tmp.mkdir(parents=True)
        _barrier()
        dist_checkpointing.save(sharded_state, str(tmp))
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
        if _rank() == 0:
            torch.save(train_state, tmp / "train_state.pt")
        _barrier()
        if _rank() == 0:
            for p in tmp.rglob("*"):
                if p.is_file():
                    with open(p, "rb+") as f:
                        os.fsync(f.fileno())
            os.replace(tmp, self.path(step))
            fsync_dir(self.root)
            atomic_write_bytes(self.root / LATEST, f"{step}\n".encode())
            for old in self.steps()[:-self.keep]:
                if old != step:
                    shutil.rmtree(self.path(old), ignore_errors=True)
        _barrier()
        return self.path(step)

    def load(self, step: int, sharded_state: dict) -> tuple[dict, dict]:
        """(loaded sharded state, train_state); this rank's RNG streams are restored too."""
        from megatron.core import dist_checkpointing

        path = self.path(step)
        loaded = dist_checkpointing.load(sharded_state, str(path))
        train_state = torch.load(path / "train_state.pt", weights_only=False)
        rng_file = path / "rng" / f"rank_{_rank()}.pt"
        if not rng_file.exists():
            raise RuntimeError(f"{path} has no RNG state for rank {_rank()}: was it saved with "
                               "another number of ranks?")
        set_rng_state(torch.load(rng_file, weights_only=False))
        return loaded, train_state

    def load_model_only(self, path: Path, sharded_model_state: dict) -> dict:
        """Model weights of another run's checkpoint (to start a new stage from it)."""
        from megatron.core import dist_checkpointing

        return dist_checkpointing.load({"model": sharded_model_state}, str(path))["model"]
