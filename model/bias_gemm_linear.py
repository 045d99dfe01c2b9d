"""Megatron's tensor-parallel linears with the bias added inside the GEMM.

Why: without Transformer Engine, Megatron's local linears multiply and then add the bias in a
separate elementwise kernel: inside the linear, or later in the MLP and in bias-dropout-add
when ``skip_bias_add`` hands the bias on (to be fused there by kernels that also need TE or
Apex). The ViT has four biased linears a layer over every patch of the pack (about 130K patch
tokens for a 32K-token video pack, each run twice under activation recomputation): those adds
took 140 ms of a 1.38 s keye-cut training step on an H100, 10% of it (tests/bench/RESULTS.md,
2026-12-06). ``torch.nn.functional.linear`` with a bias runs cuBLASLt's bias epilogue instead, so
the add costs no extra pass over the output.

Only the forward changes, and only where Megatron's would do no communication (tensor parallel
size 1, no sequence parallelism, not an expert layer): then its layer is exactly x W^T + b. The
subclasses keep Megatron's parameters, initialisation, gradient hooks and sharded state dict, so
checkpoints are unchanged. The bias comes back added (second output None) even when
``skip_bias_add`` asked for it separately; every consumer of that output (Megatron's MLP and
bias-dropout-add, longshot's attention) adds a bias only when one is returned.
"""
from __future__ import annotations

import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


def _local(layer) -> bool:
    """True when Megatron's forward of this layer would be a plain local x W^T (+ b)."""
    tp = layer.tp_group.size() if layer.tp_group is not None else 1
    return (tp == 1 and not layer.sequence_parallel and not layer.explicit_expert_comm
            and not layer.gradient_accumulation_fusion and not layer.config.defer_embedding_wgrad_compute)


class BiasGemmColumnLinear(ColumnParallelLinear):
    """ColumnParallelLinear whose bias is added by the GEMM's epilogue at tensor parallel size 1."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        if (weight is not None and weight is not self.weight) or not _local(self):
            return super().forward(input_, weight, runtime_gather_output)
        return F.linear(input_, self.weight, self.bias), None


class BiasGemmRowLinear(RowParallelLinear):
    """RowParallelLinear whose bias is added by the GEMM's epilogue at tensor parallel size 1."""

    def forward(self, input_):
        if not _local(self):
            return super().forward(input_)
        return F.linear(input_, self.weight, self.bias), None
