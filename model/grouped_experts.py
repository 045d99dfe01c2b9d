"""MoE experts as two grouped GEMMs instead of a Python loop over experts.

Why: without Transformer Engine Megatron-core only offers SequentialMLP, which runs every local
expert as its own small MLP: 3 matmuls and a few elementwise kernels per expert, forward and
backward, so a layer of 32 experts launches hundreds of kernels and first reads the tokens-per-
expert counts back to the host. Measured on two H200s (tests/bench/RESULTS.md, issue 13), the
host could not issue them as fast as the GPU ran them: context parallelism halved the GPU work
and the step barely got faster. PyTorch's grouped GEMM (`torch.nn.functional.grouped_mm`, bf16 on
Hopper) runs all experts of a layer in one launch per projection, with the group sizes given as
offsets on the device, so nothing waits for the host.

The module *is* a SequentialMLP (same per-expert parameters `local_experts.{i}.linear_fc1/fc2`,
same sharded checkpoint layout, same expert-parallel placement): only its forward changes. The
expert weights are stacked at each call (one copy per projection, small next to the GEMMs);
gradients reach each expert's own parameter through the stack. On the CPU, for other dtypes, or
with features the grouped path does not implement (FP8, probabilities applied on the input),
the loop of SequentialMLP runs instead: the two are the same function, which the tests check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.moe.experts import SequentialMLP

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_mm_available(x: torch.Tensor) -> bool:
    """Grouped GEMM is used for bf16 on a CUDA device of compute capability 9.0 or more (what
    PyTorch's kernel supports); the loop serves everything else."""
    return (_GROUPED_MM is not None and x.is_cuda and x.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] >= 9)


class GroupedExperts(SequentialMLP):
    """SequentialMLP whose forward runs all local experts as grouped GEMMs (see the module doc)."""

    #: Set False to force the loop (tests compare the two paths on the same weights).
    use_grouped = True

    def _grouped_ok(self, x: torch.Tensor) -> bool:
        cfg = self.config
        return (self.use_grouped and self.num_local_experts > 1 and grouped_mm_available(x)
                and not (cfg.fp8 or cfg.fp4 or cfg.moe_apply_probs_on_input or cfg.add_bias_linear))

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        x = permuted_local_hidden_states
        if not self._grouped_ok(x):
            return super().forward(x, tokens_per_expert, permuted_probs)
        counts = torch.as_tensor(tokens_per_expert).to(x.device, non_blocking=True)
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        fc1 = torch.stack([e.linear_fc1.weight for e in self.local_experts]).transpose(1, 2)
        fc2 = torch.stack([e.linear_fc2.weight for e in self.local_experts]).transpose(1, 2)
        h = _GROUPED_MM(x, fc1, offs=offs)  # [tokens, (2x) ffn]
        h = self._activation(h)
        # Megatron's MLP scales by the routing probability after the activation, in the
        # probabilities' precision, then returns to the activations' dtype.
        h = (h * permuted_probs.unsqueeze(-1)).to(x.dtype)
        return _GROUPED_MM(h, fc2, offs=offs), None

    def _activation(self, h: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not cfg.gated_linear_unit:
            return cfg.activation_func(h)
        gate, linear = torch.chunk(h, 2, dim=-1)
        if (clamp := cfg.activation_func_clamp_value) is not None:
            gate = gate.clamp(max=clamp)
            linear = linear.clamp(min=-clamp, max=clamp)
        return cfg.activation_func(gate) * (linear + cfg.glu_linear_offset)
