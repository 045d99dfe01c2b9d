"""The grouped-GEMM experts compute what Megatron's SequentialMLP loop computes (bf16, on a GPU):
the same outputs and the same gradient for every expert's weights, with uneven and empty expert
groups, for the `small` preset's expert shape and the keye-30b-a3b one."""
from __future__ import annotations

import pytest
import torch

from model.grouped_experts import GroupedExperts, grouped_mm_available


def _experts(name: str):
    from megatron.core.process_groups_config import ProcessGroupCollection

    from model.build import init_megatron
    from model.megatron_configs import lm_transformer_config
    from model.presets import preset

    init_megatron(seed=1234)
    lm = preset(name).lm
    cfg = lm_transformer_config(lm, dtype=torch.bfloat16, init_std=0.02, cpu_init=False)
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec

    subs = get_moe_module_spec(use_te=False, num_experts=lm.experts).keywords["submodules"].experts.keywords
    module = GroupedExperts(lm.experts, cfg, pg_collection=ProcessGroupCollection.use_mpu_process_groups(), **subs)
    return module.cuda(), lm


@pytest.mark.parametrize("name", ["small", "keye-30b-a3b"])
def test_grouped_experts_match_the_loop(name):
    module, lm = _experts(name)
    x0 = torch.randn(4096, lm.hidden, device="cuda", dtype=torch.bfloat16)
    assert grouped_mm_available(x0)
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    counts = torch.multinomial(torch.rand(lm.experts, generator=g), 4096, replacement=True, generator=g)
    tokens = torch.bincount(counts, minlength=lm.experts)
    tokens[torch.randint(lm.experts, (2,), generator=g)] = 0  # empty experts too
    x0 = x0[: int(tokens.sum())]
    probs = torch.rand(x0.shape[0], device="cuda", dtype=torch.float32)
    dy = torch.randn(x0.shape[0], lm.hidden, device="cuda", dtype=torch.bfloat16)
    got = {}
    for grouped in (True, False):
        module.use_grouped = grouped
        module.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        y, _ = module(x, tokens, probs)
        (y.float() * dy.float()).sum().backward()
        got[grouped] = (y.detach().float(), x.grad.float(),
                        [p.grad.float() for p in module.parameters()])
    (y1, dx1, g1), (y0, dx0, g0) = got[True], got[False]

    def rel(a, b):
        return float((a - b).norm() / (b.norm() + 1e-12))

    assert rel(y1, y0) < 1e-2, rel(y1, y0)
    assert rel(dx1, dx0) < 1e-2, rel(dx1, dx0)
    worst = max(rel(a, b) for a, b in zip(g1, g0) if b.norm() > 0)
    assert worst < 2e-2, worst
    empty = [i for i in range(lm.experts) if tokens[i] == 0]
    for i in empty:  # an expert without tokens gets no gradient (zero, or none at all)
        gr = module.local_experts[i].linear_fc1.weight.grad
        assert gr is None or float(gr.abs().max()) == 0.0
