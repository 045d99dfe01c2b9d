"""The files of a Hugging Face checkpoint folder: config.json and (sharded) safetensors.

Reading is lazy: tensors are opened by name from their shard, one at a time, so a 30B
checkpoint is never whole in memory. Writing fills shards up to a size limit and writes the
index (model.safetensors.index.json) that transformers reads.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from jobs.atomic import atomic_write_bytes
from jobs.cli import BadInput

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise BadInput(f"{folder}: no config.json (not a Hugging Face checkpoint folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON ({exc})") from None


class SafetensorsSource:
    """Tensor names of a checkpoint folder and lazy access to each by name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / SINGLE).is_file():
            from safetensors import safe_open

            with safe_open(str(self.folder / SINGLE), "pt") as f:
                weight_map = {name: SINGLE for name in f.keys()}  # noqa: SIM118 (not a dict)
        else:
            raise BadInput(f"{folder}: neither {INDEX} nor {SINGLE}")
        for shard in set(weight_map.values()):
            if not (self.folder / shard).is_file():
                raise BadInput(f"{folder}: shard {shard} named in the index is missing")
        self.file_of = weight_map
        self._open: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self.file_of)

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        shard = self.file_of[name]
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.folder / shard), "pt")
        return self._open[shard].get_tensor(name)


class SafetensorsWriter:
    """Adds tensors to numbered shards of at most `shard_bytes`; `close` writes the index."""

    def __init__(self, folder: Path, shard_bytes: int = 4 << 30):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.shard_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.pending, str(self.folder / f"part-{len(self.shards):05d}.safetensors"),
                  metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        n = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.folder / f"part-{i:05d}.safetensors").rename(self.folder / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_bytes(self.folder / INDEX, json.dumps(index, indent=2).encode())
