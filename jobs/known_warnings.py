"""Silencing the warnings every longshot command would otherwise print and no user can act on.

Megatron-core without Transformer Engine or Apex announces each fallback at import, flags its
own experimental and deprecated internals on every call, and torch warns about the collectives
Megatron's optimizer uses; a training command printed dozens of these per rank before its first
step, burying the lines that matter. They are filtered once, by message, before anything
imports Megatron (the CLI's entry, and so every rank it starts). Only these exact messages are
dropped: any other warning, from longshot or a library, still shows.
"""
from __future__ import annotations

import logging
import warnings

#: (category, message regex): what is known to be harmless here, and why.
KNOWN = [
    # Megatron's import-time notes: longshot runs without TE/Apex on purpose (DESIGN.md)
    (UserWarning, r"Transformer Engine and Apex are not installed"),
    (UserWarning, r"Apex is not installed\. Falling back to Torch Norm"),
    (UserWarning, r"full scope is deprecated"),
    (UserWarning, r".*MIMO.*experimental|.*experimental.*MIMO"),
    # Megatron's own source, compiled at import (an escape in a docstring)
    (SyntaxWarning, r"invalid escape sequence"),
    # Megatron's internal calls that its next release changes; nothing for a user to do
    (DeprecationWarning, r"Warning: tp_group is None"),
    (DeprecationWarning, r"MLP requires ffn_hidden_size"),
    (DeprecationWarning, r"The following imports from `dynamic_context\.py`"),
    # Megatron's zero_grad helper reads .grad of every parameter it was given, its main-param
    # views included; nothing of longshot's reads them
    (UserWarning, r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed"),
    # torch.distributed.checkpoint about the ShardedTensor format Megatron's checkpoints use
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    (UserWarning, r"The argument order of load has been changed"),
    # `longshot eval` loads a checkpoint in one process, which is what torch assumes it means
    (UserWarning, r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to load "
                  r"in a single process"),
    # torch's renames of the collectives Megatron's distributed optimizer calls
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor|_reduce_scatter_base|"
                    r"_all_gather_base)` is deprecated"),
]


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


#: Log lines (not warnings) of the same kind: logger name -> message starts.
KNOWN_LOG_LINES = {
    # the save path longshot uses is synchronous; Megatron names its async one on every save
    "megatron.core.dist_checkpointing.strategies.torch": ("MCore's async save is deprecated",),
}


def filter_known_warnings() -> None:
    """Install the filters (idempotent: warnings' filter list drops duplicates)."""
    for category, message in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, starts in KNOWN_LOG_LINES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(starts))
