"""Some of a stored model's tensors, read without the rest.

Megatron's torch_dist checkpoints keep each parameter name of a layer stack as one tensor with a
leading layer axis (and an expert axis for the experts), so one layer's weights are slices of
tensors that hold every layer. ``dist_checkpointing.load`` refuses a state that names only some
slices (it checks that every piece of a stored tensor is read). A streamed export wants one layer
at a time, so this reads the pieces that the model's own sharded state dict names (a
ShardedTensor of a meta-device model, or the pieces a factory builds, such as the experts' gate
and up halves) through PyTorch's distributed-checkpoint reader: one read per piece, into host
memory of the entry's dtype.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load


class OnceReader(FileSystemReader):
    """A checkpoint folder's reader that parses its .metadata once: a streamed export reads the
    same checkpoint once a layer, and the metadata grows with the depth (every layer's chunks)."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self._metadata = None

    def read_metadata(self):
        if self._metadata is None:
            self._metadata = super().read_metadata()
        return self._metadata


class _PiecesPlanner(DefaultLoadPlanner):
    """Reads each requested chunk of a stored tensor into its own destination tensor."""

    def __init__(self, pieces: dict[tuple[str, tuple[int, ...]], torch.Tensor], where: Path):
        super().__init__()
        self.pieces = pieces
        self.where = where

    def create_local_plan(self) -> LoadPlan:
        items = []
        for (key, offsets), dest in self.pieces.items():
            stored = self.metadata.state_dict_metadata.get(key)
            if stored is None or not hasattr(stored, "chunks"):
                raise KeyError(f"{self.where}: the checkpoint holds no tensor {key!r}")
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
            items += create_read_items_for_chunk_list(key, stored, [chunk])
        return LoadPlan(items)

    def resolve_tensor(self, read_item):
        dest = self.pieces[(read_item.dest_index.fqn, tuple(read_item.dest_index.offset))]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths, strict=True)):
            dest = dest.narrow(dim, start, length)
        return dest


def _pieces(entry) -> tuple[list, bool]:
    """(the ShardedTensors an entry of a sharded state dict is stored as, whether a factory
    built them as a list: its merge function then takes the list)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    if isinstance(entry, ShardedTensorFactory):
        built = entry.build()
        return (built, True) if isinstance(built, list) else ([built], False)
    return [entry], False


def read_tensors(reader: OnceReader, entries: dict[str, object]) -> dict[str, torch.Tensor]:
    """{name: tensor} for the entries (name -> ShardedTensor or ShardedTensorFactory of the
    model's sharded state dict, on any device: only their keys, offsets, shapes and dtypes are
    used) from the torch_dist checkpoint ``reader`` reads; a factory's pieces are merged back into
    the tensor the model holds."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    wanted: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
    out, merges = {}, {}
    for name, entry in entries.items():
        host = []
        pieces, as_list = _pieces(entry)
        for piece in pieces:
            prepend = (1,) * piece.prepend_axis_num
            dest = torch.empty(prepend + tuple(piece.local_shape), dtype=piece.dtype)
            wanted[(piece.key, tuple(piece.global_offset))] = dest
            host.append(dest.view(tuple(piece.local_shape)))
        if isinstance(entry, ShardedTensorFactory):
            merges[name] = (entry, host if as_list else host[0])
        else:
            out[name] = host[0]
    dcp_load({}, storage_reader=reader, planner=_PiecesPlanner(wanted, reader.path))
    for name, (factory, host) in merges.items():
        out[name] = factory.merge_fn(host)
    return out
