"""Training checkpoints: RUN/checkpoints/iter_NNNNNNN, committed atomically, and a `latest` pointer.

A checkpoint holds everything a resumed run needs to continue bit for bit: the model and the
distributed optimizer (Megatron dist_checkpointing, sharded over ranks), the LR schedule and the
data cursor (train_state.json, rank 0), every rank's RNG streams (rng/rank_R.pt: tensors and
plain containers) and manifest.json, the checksums of all of these (jobs/checkpoint_manifest.py).
Nothing in it needs unpickling of arbitrary objects to load (jobs/safe_load.py).

Commit protocol (a SIGKILL at any instant leaves the previous checkpoint usable):
  1. every rank writes into iter_NNNNNNN.tmp (rank 0 first removes a stale one);
  2. the ranks checksum the files; rank 0 writes manifest.json into the .tmp folder;
  3. rank 0 fsyncs the files and renames the folder to iter_NNNNNNN (atomic on POSIX);
  4. rank 0 atomically rewrites `latest` with the step; only then older checkpoints are pruned.
A reader trusts only `latest`; a folder without it (a kill between 3 and 4) is ignored and
overwritten on the next save of that step. Before resuming, the newest checkpoint is verified
against its manifest; a damaged one is named and the newest intact one is used instead.
Checkpoints written before manifests existed (train_state.pt, no manifest) still load, with a note.
"""
from __future__ import annotations

import json
import os
import queue
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from jobs.atomic import atomic_write_bytes, fsync_dir
from jobs.checkpoint_manifest import (DAMAGED, INTACT, UNVERIFIED, Verdict, check_sizes, from_rank0, verify,
                                      write_manifest)
from jobs.cli import BadInput
from jobs.safe_load import load_plain, megatron_loading

LATEST = "latest"
TRAIN_STATE = "train_state.json"
LEGACY_TRAIN_STATE = "train_state.pt"  # pickled by checkpoints written before manifests


class DamagedCheckpoint(BadInput):
    """No checkpoint of a run can be trusted, or a given checkpoint folder is damaged."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    """Every random stream a training step may draw from, on this rank, as tensors and plain
    containers (numpy's MT19937 key becomes an int64 tensor) so that it loads weights_only."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    np_state = np.random.get_state(legacy=False)
    numpy = {"bit_generator": np_state["bit_generator"],
             "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
             "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
             "gauss": float(np_state["gauss"])}
    state = {"python": random.getstate(), "numpy": numpy,
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state(saved) -> dict | tuple:
    if isinstance(saved, tuple):  # a legacy checkpoint: np.random.get_state() as pickled
        return saved
    return {"bit_generator": saved["bit_generator"], "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
            "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]}}


def fresh_rng_streams(seed: int, step: int) -> None:
    """Every stream of this rank seeded from (seed, step, rank): what a resumed run uses when the
    checkpoint's streams belonged to another layout's ranks."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from model import megatron_compat

    value = (seed * 1_000_003 + step) * 1_009 + _rank()
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    model_parallel_cuda_manual_seed(value % 2**31, force_reset_rng=not megatron_compat.needed())


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _legacy_numpy_globals() -> tuple:
    """What np.random.get_state()'s uint32 array needs to unpickle (checkpoints written before
    manifests); only array reconstruction, no callable that could run code."""
    from numpy._core.multiarray import _reconstruct

    return (_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)))


def _in_process_write_queue() -> None:
    # Megatron's checkpoint writer reports results through a multiprocessing Manager queue, a
    # server process that would outlive a SIGKILLed trainer. Saves here are synchronous, so the
    # writer runs in this process and a thread-safe queue does the same job.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def check_folder(folder: Path, quick: bool = False) -> Verdict:
    """Collective: verify a checkpoint folder against its manifest (`quick`: its files' sizes
    only, one process). A folder without one is `unverified` only in the layout written before
    manifests (train_state.pt); in today's layout a missing manifest is damage."""
    verdict = check_sizes(folder) if quick else verify(folder)
    if verdict.state != UNVERIFIED:
        return verdict
    if (Path(folder) / LEGACY_TRAIN_STATE).exists():
        return Verdict(verdict.folder, UNVERIFIED, None,
                       f"written before checkpoints had checksums (no {verdict.file})")
    return Verdict(verdict.folder, DAMAGED, verdict.file, "missing")


def read_train_state(folder: Path) -> dict:
    path = folder / TRAIN_STATE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DamagedCheckpoint(f"{path}: not a JSON train state ({exc})") from None
    return load_plain(folder / LEGACY_TRAIN_STATE)


class Checkpoints:
    """A run's checkpoints: the newest `keep` are kept, and the steps in `pinned` (the end of a
    DSA warm-up: a sparse stage can restart from it with another k or rule) are never pruned."""

    def __init__(self, run_dir: Path, keep: int = 2, pinned: Iterable[int] = ()):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = max(1, keep)
        self.pinned = frozenset(pinned)

    def path(self, step: int) -> Path:
        return self.root / f"iter_{step:07d}"

    def pointer(self) -> int | None:
        """The step `latest` names; None when it is absent or unreadable."""
        try:
            return int((self.root / LATEST).read_text().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def steps(self) -> list[int]:
        out = []
        for p in self.root.glob("iter_*"):
            if p.is_dir() and not p.name.endswith(".tmp"):
                out.append(int(p.name[5:]))
        return sorted(out)

    def _candidates(self) -> tuple[str | None, list[int]]:
        """Committed steps a resume may use (oldest first), and a note when `latest` is damaged."""
        pointer = self.pointer()
        if pointer is not None:
            return None, [s for s in self.steps() if s <= pointer]
        if not (self.root / LATEST).exists():
            return None, []  # nothing committed yet (a folder without `latest` is not trusted)
        note = (f"note: {self.root / LATEST} is unreadable; choosing among the checkpoints by "
                "their checksums")
        return note, self.steps()

    def latest(self, log=print) -> int | None:
        """Collective: the newest committed checkpoint that is intact, or unverified because it
        was written before checksums existed. A damaged one is named in one line and the next
        older one is tried. None when the run has no checkpoint yet; DamagedCheckpoint when it
        has some and none can be used. Every rank returns the same step."""
        say = log if _rank() == 0 else (lambda msg: None)
        note, steps = from_rank0(self._candidates() if _rank() == 0 else None)
        if note:
            say(note)
        damaged = []
        for step in reversed(steps):
            verdict = check_folder(self.path(step))
            if verdict.state == INTACT:
                return step
            if verdict.state == UNVERIFIED:
                say(f"note: {self.path(step)} was written before checkpoints had checksums; "
                    "resuming from it unverified")
                return step
            say(f"checkpoint {verdict.describe()}; not resuming from it")
            damaged.append(verdict.describe())
        if damaged:
            raise DamagedCheckpoint(
                f"no intact checkpoint in {self.root}: {'; '.join(damaged)}. Restore the files "
                f"from a copy, or move {self.root} away to train from step 0")
        return None

    def verdicts(self, quick: bool = False) -> list[Verdict]:
        """Every committed checkpoint's state, oldest first (for `longshot status`); `quick`
        compares file sizes instead of hashing every byte."""
        return [check_folder(self.path(step), quick) for step in self.steps()]

    def save(self, step: int, sharded_state: dict, train_state: dict) -> Path:
        """Collective: every rank calls it with its sharded state; rank 0's train_state is kept
        (JSON: step, scheduler state, stage, config)."""
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
            (tmp / TRAIN_STATE).write_text(json.dumps(train_state, sort_keys=True, indent=1))
        _barrier()
        write_manifest(tmp)
        if _rank() == 0:
            for p in tmp.rglob("*"):
                if p.is_file():
                    with open(p, "rb+") as f:
                        os.fsync(f.fileno())
            os.replace(tmp, self.path(step))
            fsync_dir(self.root)
            atomic_write_bytes(self.root / LATEST, f"{step}\n".encode())
            for old in [s for s in self.steps() if s not in self.pinned][:-self.keep]:
                if old != step:
                    shutil.rmtree(self.path(old), ignore_errors=True)
        _barrier()
        return self.path(step)

    def load(self, step: int, sharded_state: dict) -> tuple[dict, dict]:
        """(loaded sharded state, train_state); this rank's RNG streams are restored too.
        Nothing is unpickled but tensors and plain data (see jobs/safe_load.py)."""
        from megatron.core import dist_checkpointing

        path = self.path(step)
        with megatron_loading(path):
            loaded = dist_checkpointing.load(sharded_state, str(path))
        train_state = read_train_state(path)
        saved = len(list((path / "rng").glob("rank_*.pt")))
        world = dist.get_world_size() if dist.is_initialized() else 1
        if saved != world:
            # Another layout: Megatron reshards the model and the optimizer, but a rank's random
            # streams belonged to the old layout's rank; every rank starts fresh, known ones.
            seed = int(train_state.get("config", {}).get("seed", 0))
            fresh_rng_streams(seed, step)
            if _rank() == 0:
                print(f"note: {path} was saved by {saved} ranks and is loaded by {world}: the model "
                      f"and optimizer are resharded; random streams restart from (seed {seed}, step {step}, rank)",
                      flush=True)
            return loaded, train_state
        rng_file = path / "rng" / f"rank_{_rank()}.pt"
        if not rng_file.exists():
            raise DamagedCheckpoint(f"checkpoint {path}: no RNG state for rank {_rank()} (rng/{rng_file.name})")
        legacy = not (path / TRAIN_STATE).exists()
        set_rng_state(load_plain(rng_file, allow=_legacy_numpy_globals() if legacy else ()))
        return loaded, train_state

    def load_model_only(self, path: Path, sharded_model_state: dict, log=print, verified: bool = False) -> dict:
        """Model weights of another run's checkpoint (to start a new stage from it). Collective.
        The folder is verified when it has a manifest (unless the caller just did: `verified`)
        and loaded safely either way: the manifest says nothing about who wrote it."""
        from megatron.core import dist_checkpointing

        path = _checked_source(Path(path), log, verified)
        with megatron_loading(path):
            return dist_checkpointing.load({"model": sharded_model_state}, str(path))["model"]

    def read_model_parts(self, path: Path, parts, log=print, verified: bool = False):
        """Yields the tensors of each part (a dict of entries of the model's sharded state dict,
        of a meta-device model, say) in turn, without reading the rest of the checkpoint
        (jobs/checkpoint_slices.py). Verified once and loaded safely, as load_model_only."""
        from jobs.checkpoint_slices import OnceReader, read_tensors

        path = _checked_source(Path(path), log, verified)
        reader = OnceReader(path)
        for entries in parts:
            with megatron_loading(path):
                got = read_tensors(reader, entries)
            yield got

def _checked_source(path: Path, log, verified: bool) -> Path:
    """``path`` if it is a checkpoint folder whose files are intact (or carry no manifest, said
    in a note); unless the caller has just verified it."""
    if not (path / "metadata.json").is_file():
        raise BadInput(f"{path}: not a checkpoint folder (no metadata.json)")
    if not verified:
        verdict = verify(path)
        if verdict.state == DAMAGED:
            raise DamagedCheckpoint(f"checkpoint {verdict.describe()}")
        if verdict.state == UNVERIFIED and _rank() == 0:
            log(f"note: {path} has no {verdict.file}; its files are not verified")
    return path
