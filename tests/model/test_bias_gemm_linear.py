"""The ViT's linears with the bias in the GEMM (model/bias_gemm_linear.py) against Megatron's own
ColumnParallelLinear and RowParallelLinear: same output (bias added where Megatron adds it, or
hands it on), same input, weight and bias gradients, same state dict; the ViT layer spec uses them."""
import pytest
import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from model.bias_gemm_linear import BiasGemmColumnLinear, BiasGemmRowLinear
from model.config import VisionConfig
from model.megatron_configs import vit_transformer_config


def _pair(kind, skip_bias_add, pg):
    cfg = vit_transformer_config(VisionConfig(hidden=48, heads=4, layers=1, ffn=80), dtype=torch.float32,
                                 init_std=0.05, cpu_init=True)
    common = dict(config=cfg, init_method=torch.nn.init.normal_, bias=True, skip_bias_add=skip_bias_add,
                  is_expert=False, tp_group=pg.tp)
    if kind == "column":
        make = lambda c: c(48, 80, gather_output=False, **common)  # noqa: E731
        pair = make(ColumnParallelLinear), make(BiasGemmColumnLinear)
    else:
        make = lambda c: c(48, 80, input_is_parallel=True, **common)  # noqa: E731
        pair = make(RowParallelLinear), make(BiasGemmRowLinear)
    with torch.no_grad():
        pair[0].bias.normal_()
    pair[1].load_state_dict(pair[0].state_dict())
    return pair


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("skip_bias_add", [False, True])
def test_same_outputs_and_gradients_as_megatrons_linear(kind, skip_bias_add, pg):
    theirs, ours = _pair(kind, skip_bias_add, pg)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x = torch.randn(37, 1, 48, generator=torch.Generator().manual_seed(torch.seed() % 2**31))
    outs = []
    for layer in (theirs, ours):
        xi = x.clone().requires_grad_()
        out, bias = layer(xi)
        if bias is not None:  # handed on, as MLP and bias-dropout-add then add it
            out = out + bias
        out.pow(2).sum().backward()
        outs.append((out.detach(), xi.grad, layer.weight.grad, layer.bias.grad))
    for name, a, b in zip(["output", "d input", "d weight", "d bias"], *outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)


def test_vit_layer_spec_uses_them():
    from model.layer_specs import vit_block_spec

    layer = vit_block_spec(1).layer_specs[0].submodules
    mlp = layer.mlp.keywords["submodules"]
    assert layer.self_attention.submodules.linear_qkv is BiasGemmColumnLinear
    assert layer.self_attention.submodules.linear_proj is BiasGemmRowLinear
    assert (mlp.linear_fc1, mlp.linear_fc2) == (BiasGemmColumnLinear, BiasGemmRowLinear)
