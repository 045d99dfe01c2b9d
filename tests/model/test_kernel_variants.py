"""The ablation benches' kernel variants still apply to the kernels they time.

Why: a variant is the kernel module's source with text cuts (tests/bench/kernel_variants.py), so a
kernel change that a bench's cuts do not follow stops that bench on the GPU, where device time is
scarce (the attention's index load moved into kernels/common.py on 2026-12-07 and the backward
ablation's cut stopped matching). Here every variant is built and imported, and its kernel source
is checked to differ from the shipped one by exactly its cuts.
"""
from __future__ import annotations

import importlib
import inspect

import pytest


@pytest.mark.parametrize("bench,module", [("bench_attn_ablation", "attention"), ("bench_kl_ablation", "indexer_kl")])
def test_ablation_variants_apply_to_the_kernels(bench, module, tmp_path):
    from tests.bench.kernel_variants import variant

    cuts = importlib.import_module(f"tests.bench.{bench}").CUTS
    mod = importlib.import_module(f"model.dsa.kernels.{module}")
    shipped = inspect.getsource(mod)
    for name, cut in cuts.items():
        made = variant(mod, name, cut, str(tmp_path))
        src = inspect.getsource(made)
        for old, new in cut:
            assert src.count(old) == 0 or old in new, (bench, name, old)
            assert new in src, (bench, name, new)
        assert (src == shipped) == (not cut), (bench, name)
