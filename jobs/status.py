"""`longshot status DIR`: what every job in a folder has done, is doing, and why units failed."""
from __future__ import annotations

import json
from pathlib import Path

from jobs.ledger import COMMITTING, DONE, FAILED, Ledger
from jobs.lock import FolderLock


def find_job_folders(root: Path, depth: int = 3) -> list[Path]:
    """Folders that hold job state: ROOT itself and job folders below it (e.g. a dataset's packs)."""
    root = Path(root)
    patterns = [".longshot"] + ["/".join(["*"] * d) + "/.longshot" for d in range(1, depth + 1)]
    return [state.parent for pattern in patterns for state in sorted(root.glob(pattern))
            if state.is_dir()]


def describe_folder(folder: Path, quick: bool = False) -> list[str]:
    lines = []
    busy = FolderLock(folder).is_held_by_other()
    holder = FolderLock(folder).holder() if busy else None
    lines.append(f"{folder}" + (f"  [running: pid {holder.get('pid')}]" if holder else ""))
    for state_dir in sorted(p for p in (folder / ".longshot").iterdir() if p.is_dir()):
        meta_path = state_dir / "job.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        if not (state_dir / "units.jsonl").exists() and meta["config"].get("steps") is not None:
            lines.append(_describe_training(folder, meta, busy))
            lines.extend(_describe_checkpoints(folder, quick))
            continue
        units_path = state_dir / "units.jsonl"
        total = len(units_path.read_text().splitlines()) if units_path.exists() else 0
        records = Ledger.read(state_dir / "ledger.jsonl")
        final = records.pop("__finalize__", None)
        states = [r.state for r in records.values()]
        done = states.count(DONE) + states.count(COMMITTING)
        failed = {u: r for u, r in records.items() if r.state == FAILED}
        finished = final is not None and final.state == DONE
        status = "complete" if finished else ("running" if busy else "incomplete")
        lines.append(f"  {meta['job']:<10} {status:<10} units {done}/{total} done, "
                     f"{len(failed)} failed, {total - done - len(failed)} pending "
                     f"(config {meta['config_hash']})")
        for unit, rec in sorted(failed.items())[:10]:
            reason = (rec.error or "").splitlines()[0]
            lines.append(f"    failed {unit} after {rec.attempt} attempt(s): {reason}")
        if len(failed) > 10:
            lines.append(f"    ... and {len(failed) - 10} more failed units")
    return lines


def _describe_training(folder: Path, meta: dict, busy: bool) -> str:
    """A training run is a loop, not units: say how far it got and what it last logged."""
    steps = meta["config"]["steps"]
    from jobs.checkpoint import Checkpoints

    latest = Checkpoints(folder).pointer() or 0
    last = None
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines()[::-1]:
            try:
                last = json.loads(line)
                break
            except ValueError:  # a line being written right now
                continue
    status = "complete" if latest >= steps else ("running" if busy else "incomplete")
    text = (f"  {meta['job']:<10} {status:<10} checkpoint at step {latest} of {steps} "
            f"(config {meta['config_hash']})")
    if last:
        text += f"; last logged step {last['step']}: loss {last['loss']:.4f}"
    return text


def _describe_checkpoints(folder: Path, quick: bool = False) -> list[str]:
    """Each checkpoint verified against its checksums: intact, or damaged and which file.
    This reads every byte of every kept checkpoint (about 1.5-4 GB/s per core for the CRC);
    `quick` compares the files' sizes with the manifest instead (a listing, no reads)."""
    from jobs.checkpoint import Checkpoints

    lines = []
    for v in Checkpoints(folder).verdicts(quick):
        detail = f": {v.file}: {v.reason}" if v.file else _role(v.folder)
        lines.append(f"    checkpoint {v.folder.name}  {v.state}{detail}")
    return lines


def _role(checkpoint: Path) -> str:
    """Names the checkpoint that ends a DSA warm-up: the one to start another sparse stage from."""
    from jobs.checkpoint import DamagedCheckpoint, read_train_state

    try:
        state = read_train_state(checkpoint)
    except (OSError, ValueError, DamagedCheckpoint):  # unreadable: the verdict above already says so
        return ""
    cfg = state.get("config") or {}
    if cfg.get("attention") == "dsa" and state.get("step") == cfg.get("dsa_warmup_steps"):
        return "  (end of the DSA warm-up: --init-from it to start a sparse stage)"
    return ""


def status_text(root: Path, quick: bool = False) -> str:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    folders = find_job_folders(root)
    if not folders:
        return f"{root}: no longshot job has run here (no .longshot folder found)"
    return "\n".join(line for f in folders for line in describe_folder(f, quick))
