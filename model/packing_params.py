"""The PackedSeqParams Megatron layers pass down to attention, for one packed sequence."""
from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def packed_params(cu_seqlens: torch.Tensor) -> PackedSeqParams:
    """The boundaries stay on the host (read from the device here, once per forward, if they
    are there): every layer's attention walks them in Python, and a device copy would make each
    layer wait for the GPU. Kernels that need them on the device copy them there."""
    cu = cu_seqlens.to(device="cpu", dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=longest, max_seqlen_kv=longest)
