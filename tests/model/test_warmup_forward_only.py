"""The DSA warm-up runs the backbone forward only: each layer backpropagates its own indexer loss
where it is computed, and no backward passes through the frozen attention and experts.

Checked against the other mechanism, which the sparse stage still uses: the indexer's gradient
injected into the attention output's backward, reached by a full backward through the model.
Both must give every indexer parameter the same gradient, and nothing else any."""
from __future__ import annotations

import pytest
import torch

from model.attention import CoreChoice
from model.build import BuildOptions, build_vlm, init_megatron
from model.megatron_compat import compute_device
from model.presets import preset
from model.training import OptimSettings, Trainer, configure_core
from tests.model.vlm_batches import make_batch

DOCS = ((60, (2, 4, 4)), (40, None), (30, (1, 3, 2)))  # long enough that top-16 is a real choice
CFG = preset("tiny").with_overrides(attention="dsa")


def _warmup_model(pg, local: bool, state=None, recompute: bool = False, backend: str = "reference"):
    core = CoreChoice()
    configure_core(core, "warmup", CFG.lm.dsa, on_gpu=False)
    core.local_indexer_grads, core.backend = local, backend
    torch.manual_seed(7)
    model = build_vlm(CFG, pg, core, opts=BuildOptions(dtype=torch.float32, recompute=recompute))
    if state is not None:
        model.load_state_dict(state)
    for name, p in model.named_parameters():  # as the warm-up's trainer sets them
        p.requires_grad_(".indexer." in name)
    return model


@pytest.mark.parametrize("backend", ["reference", "triton"])  # triton: the kernels, interpreted on a CPU
def test_layer_by_layer_indexer_gradients_equal_the_injected_ones(backend):
    pg = init_megatron(seed=3)
    batch = make_batch(CFG.lm.vocab, CFG.vision_token_id, seed=4, docs=DOCS).to(compute_device())
    injected = _warmup_model(pg, local=False, backend=backend)
    out = injected(batch)
    assert out.ce.requires_grad  # this path needs the whole backward to reach the injections
    out.objective("warmup").backward()
    want = {n: p.grad.clone() for n, p in injected.named_parameters() if p.grad is not None}

    local = _warmup_model(pg, local=True, state=injected.state_dict(), backend=backend)
    out_local = local(batch)
    assert not out_local.ce.requires_grad, "the warm-up's backbone kept a graph"
    got = {n: p.grad.clone() for n, p in local.named_parameters() if p.grad is not None}
    out_local.backward("warmup")  # nothing left to run
    assert set(got) == set(want) and want
    assert all(".indexer." in n for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(out_local.indexer, out.indexer)


def test_warmup_with_recomputation_is_refused_clearly():
    pg = init_megatron(seed=3)
    model = _warmup_model(pg, local=True, recompute=True)
    with pytest.raises(ValueError, match="without activation recomputation"):
        Trainer(model, OptimSettings(), 2, "warmup", pg)
    batch = make_batch(CFG.lm.vocab, CFG.vision_token_id, seed=4, docs=DOCS).to(compute_device())
    model.train()
    try:
        with pytest.raises(RuntimeError, match="without activation recomputation"):
            model(batch)
    finally:  # raised inside Megatron's checkpoint forward, which then never clears its flag
        from megatron.core.tensor_parallel import random as megatron_random

        megatron_random._unset_checkpointing()


def test_warmup_forward_under_no_grad_is_an_evaluation():
    """A forward without autograd in training mode (a quality probe, an evaluation that forgot
    model.eval()) makes no gradient and raises nothing: only recomputation is refused."""
    pg = init_megatron(seed=3)
    model = _warmup_model(pg, local=True).train()
    batch = make_batch(CFG.lm.vocab, CFG.vision_token_id, seed=4, docs=DOCS).to(compute_device())
    with torch.no_grad():
        out = model(batch)
    assert out.indexer > 0
    assert all(p.grad is None for p in model.parameters())
