"""The gradient-norm stand-in gives Megatron's own fallback's number, on random tensors of the
shapes and dtypes a model's gradients have (empty list included)."""
import torch
from megatron.core.utils import local_multi_tensor_l2_norm

from model import megatron_compat
from model.megatron_fallbacks import grad_l2_norm


def test_grad_l2_norm_matches_megatrons_fallback():
    megatron_compat.apply()  # Megatron's fallback puts its result on "cuda": the CPU layer redirects it
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    shapes = [(64, 32), (7,), (3, 5, 11), (1,), (128,)]
    tensors = [torch.randn(s, generator=g) * torch.rand(1, generator=g) * 10 for s in shapes]
    flag = torch.zeros(1, dtype=torch.int)
    want, _ = local_multi_tensor_l2_norm(2048, flag, [tensors], False)
    got, _ = grad_l2_norm(2048, flag, [tensors], False)
    assert got.shape == (1,) and got.dtype == torch.float32
    assert torch.allclose(got.cpu(), want.cpu(), rtol=1e-6), (got, want)
    empty, _ = grad_l2_norm(2048, flag, [[]], False)
    assert float(empty) == 0.0
