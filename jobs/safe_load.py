"""Loading checkpoint files without letting them run code.

A pickle can call any importable function while it loads, so a checkpoint handed over by
someone else (`--init-from`, a copied run folder) must never be unpickled freely. Our own files
are JSON or tensors and plain containers loaded with torch.load(weights_only=True). Megatron's
dist_checkpointing reads the model and optimizer through torch.distributed.checkpoint, which
unpickles in two places:
  - the `.metadata` file, with plain pickle.load (FileSystemReader.read_metadata);
  - every non-tensor object (ShardedObject: optimizer param groups, `common_state`, the layers'
    `_extra_state`), with torch.load(weights_only=False) (DefaultLoadPlanner.load_bytes).
Tensor data itself is read with weights_only=True already. `megatron_loading()` makes both
places safe for the duration of one load: `.metadata` goes through an unpickler that only knows
the checkpoint metadata classes, and torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD switch turns every
torch.load into a weights_only one (every object Megatron stores is plain data: lists, dicts,
numbers, strings, dtypes, tensors). A file that needs anything else is refused, naming it.
"""
from __future__ import annotations

import contextlib
import enum
import os
import pickle
import re
import types
from collections import OrderedDict
from pathlib import Path

import torch

from jobs.cli import BadInput


class UnsafeCheckpoint(BadInput):
    """A checkpoint file that would need arbitrary objects (code) to load: refused, not loaded."""


def refusal(where: Path | str, exc: Exception) -> UnsafeCheckpoint:
    """One line naming the file and the global it asked for (torch's own message is a page)."""
    found = re.search(r"GLOBAL ([\w.]+)|global '([\w.]+)'", str(exc))
    what = next((g for g in found.groups() if g), None) if found else None
    reason = f"it references {what}" if what else str(exc).splitlines()[0][:200]
    return UnsafeCheckpoint(f"{where}: refused to load: {reason}, not only tensors and plain data "
                            "(unpickling it could run code)")


def load_plain(path: Path, allow: tuple = ()):
    """torch.load of tensors and plain containers only; `allow` adds specific safe globals."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refusal(path, exc) from None


def _metadata_globals() -> dict[tuple[str, str], object]:
    """What a torch.distributed.checkpoint `.metadata` pickle may name: its own dataclasses and
    enums, torch.Size, dtypes and layouts (the classes are data; calling them runs no code)."""
    from torch.distributed.checkpoint import filesystem, metadata, planner

    allowed = [torch.Size, OrderedDict, torch.serialization._get_layout, filesystem._StorageInfo]
    for module in (metadata, planner):
        allowed += [v for v in vars(module).values() if isinstance(v, type)
                    and v.__module__ == module.__name__
                    and (hasattr(v, "__dataclass_fields__") or issubclass(v, enum.Enum))]
    out = {(v.__module__, v.__qualname__): v for v in allowed}
    out.update({("torch", name): v for name, v in vars(torch).items() if isinstance(v, torch.dtype)})
    # empty placeholders Megatron defines so that checkpoints of older versions unpickle
    out.update({("megatron.core.dist_checkpointing.strategies.torch", n): type(n, (), {})
                for n in ("MCoreMetadata", "MCoreSavePlan")})
    return out


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, stream, allowed: dict):
        super().__init__(stream)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not checkpoint metadata") from None


def _restricted_pickle() -> types.SimpleNamespace:
    """Stands in for the `pickle` module inside torch.distributed.checkpoint.filesystem."""
    allowed = _metadata_globals()
    return types.SimpleNamespace(load=lambda stream: _load_metadata(stream, allowed), dump=pickle.dump, dumps=pickle.dumps,
                                 UnpicklingError=pickle.UnpicklingError)


_refused: list[UnsafeCheckpoint] = []  # refusals of the load in progress (DCP rewraps errors)


def _load_metadata(stream, allowed: dict):
    try:
        return _MetadataUnpickler(stream, allowed).load()
    except pickle.UnpicklingError as exc:
        _refused.append(refusal(getattr(stream, "name", ".metadata"), exc))
        raise _refused[-1] from None


def _unpickling_error_in(exc: BaseException) -> BaseException | None:
    """The UnpicklingError behind `exc`: torch.distributed.checkpoint collects each rank's
    errors into a CheckpointException (a BaseException) that keeps the originals."""
    from torch.distributed.checkpoint.api import CheckpointException

    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, pickle.UnpicklingError):
            return e
        if isinstance(e, CheckpointException):
            todo += [wrapped for wrapped, _ in e.failures.values()]
        todo += [e.__cause__, e.__context__]
    return None


@contextlib.contextmanager
def megatron_loading(folder: Path):
    """Within: dist_checkpointing.load unpickles nothing but data; a refusal names `folder`."""
    from torch.distributed.checkpoint import filesystem

    if filesystem.pickle is not pickle:
        raise RuntimeError("torch.distributed.checkpoint.filesystem no longer reads .metadata "
                           "with the pickle module: jobs/safe_load.py must be updated")
    saved_env = {k: os.environ.pop(k, None)
                 for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    filesystem.pickle = _restricted_pickle()
    _refused.clear()
    try:
        # read once up front: DCP itself would log each failed read with a traceback (on the
        # root logger) and try other files before it raises
        with open(Path(folder) / ".metadata", "rb") as stream:
            filesystem.pickle.load(stream)
        yield
    except BaseException as exc:
        if _refused:
            raise _refused[0] from None
        cause = _unpickling_error_in(exc)
        if cause is None:
            raise
        raise refusal(f"{folder} (an object in its .distcp files)", cause) from None
    finally:
        _refused.clear()
        filesystem.pickle = pickle
        for k, v in saved_env.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
