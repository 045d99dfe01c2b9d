"""Per-step training metrics: RUN/metrics.jsonl (one JSON object a line) and TensorBoard.

On resume from step s, lines of steps after s (logged by the killed run after its last
checkpoint) are cut from the JSONL file before anything is appended, and TensorBoard is told to
purge its events after s, so every step appears exactly once in both.
"""
from __future__ import annotations

import json
from pathlib import Path

from jobs.atomic import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def truncate_after(path: Path, step: int) -> None:
    """Keep only the lines with `step` <= step (a torn last line is dropped too)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_bytes(path, "".join(kept).encode())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = self._tb = None
        if not enabled:
            return
        truncate_after(self.path, resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - appended to every step until close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is a declared dependency; JSONL still works without it
            self._tb = None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
