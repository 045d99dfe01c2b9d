"""Every Triton kernel longshot launches compiles for Hopper (sm_90), checked on a machine with no
GPU.

Why: the CPU suite runs the kernels under TRITON_INTERPRET, which executes the Python of a kernel
with numpy and so accepts code that Triton's compiler rejects (a type that does not unify across
a loop, an unsupported op, a constexpr used as a value). Such a kernel passes every CPU test and
then fails on the first GPU step. Here the kernels run once under the interpreter, as a training
step on the GPU launches them (bf16 inputs, the head dim and DSA shapes of the presets, sparse
and warm-up stages, forward and backward); each launch's argument types and constexpr values are
recorded, and a separate process without the interpreter compiles every recorded
specialisation to a Hopper cubin with Triton's own compiler (ptxas included in its wheel).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernel_launches import recorded_launches, unique

ROOT = Path(__file__).resolve().parents[2]


def _training_launches(monkeypatch):
    """What one layer's forward and backward launch on a GPU, at small sizes (token selection's
    sampled-pivot filter samples 64 keys instead of 2,048, so that rows this short reach it)."""
    from model.cross_entropy import cross_entropy_kernel
    from model.dsa import DSAConfig, dsa_attention
    from model.dsa.kernels import topk as topk_mod
    from model.rope import multi_axis_cos_sin
    from model.rope_kernel import rotary_kernel

    g = torch.Generator().manual_seed(0)
    t, hq, hkv, d, hi = 192, 4, 2, 128, 2
    bf = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).requires_grad_()  # noqa: E731
    cu = torch.tensor([0, 130, t], dtype=torch.int32)
    monkeypatch.setitem(topk_mod.CONFIG, "sample", 64)
    for stage, gran, merge in (("sparse", "block", 1), ("sparse", "token", 1), ("sparse", "token", 16),
                               ("warmup", "block", 1)):
        cfg = DSAConfig(index_heads=hi, index_dim=d, topk=32 if gran == "block" else 8, granularity=gran, block_q=64,
                        stage=stage, token_merge=merge)
        q, k, v = bf(t, hq, d), bf(t, hkv, d), bf(t, hkv, d)
        qi, ki, wi = bf(t, hi, d), bf(t, d), bf(t, hi)
        out, loss = dsa_attention(q, k, v, qi, ki, wi, cu, cfg)
        (out.float().square().sum() + loss).backward()
    pos = torch.randint(0, 1000, (3, t), generator=g)
    cos, sin = multi_axis_cos_sin(pos, (24, 20, 20), d, 1e6, "interleaved")
    rotary_kernel(bf(t, hq, d), cos, sin).float().sum().backward()
    logits = bf(8, 1000)
    cross_entropy_kernel(logits, torch.randint(0, 1000, (8,), generator=g)).sum().backward()


COMPILE = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

failed = []
for spec in json.load(open(sys.argv[1])):
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    try:
        triton.compile(ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"]),
                       target=GPUTarget("cuda", 90, 32), options=spec["options"])
    except Exception as exc:  # every kernel's failure, not just the first
        failed.append(spec["name"] + ": " + str(exc).strip().splitlines()[-1][:300])
print(json.dumps(failed))
"""


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="records launches through the interpreter")
def test_every_launched_kernel_compiles_for_hopper(monkeypatch, tmp_path):
    with recorded_launches() as launches:
        _training_launches(monkeypatch)
    # the interpreter runs the float32 adds as tl.atomic_add; a GPU launch takes the inline-PTX
    # modes (model/dsa/kernels/reduce_add.py), so those specialisations are compiled as well
    from model.dsa.kernels import reduce_add

    launches += [s | {"constexprs": s["constexprs"] | {"ADD": m}} for s in launches if "ADD" in s["constexprs"]
                 for m in reduce_add.MODES.values()]
    specs_ = unique(launches, keep_alignment=False)
    names = {s["name"] for s in specs_}
    # the kernels of each part of a training step were launched (and so will be compiled)
    for must in ("_attn_kernel", "_kl_kernel", "_scores_kernel", "_topk_kernel",
                 "_sample_kernel", "_filter_kernel", "_rotate", "_ce_forward", "_ce_backward"):
        assert must in names, (must, sorted(names))
    specs = tmp_path / "launches.json"
    specs.write_text(json.dumps(specs_))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", COMPILE, str(specs)], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(failed)


def test_the_gathering_loops_overlap_their_copies_with_their_dots(tmp_path):
    """The block attention's list loop (forward and backward) and the coarse-to-fine scores' list
    loop gather rows named by an index tile. Triton's pipeliner overlaps such gathers with the
    dots only if the index load stays a register load (under an `if`); at the loop's top level it
    becomes an async copy and the gathers are awaited at every tile's top (`async_wait {num = 0}`,
    tests/bench/RESULTS.md, 2026-12-07). Compiled for sm_90 at the production shape through
    tests/bench/kernel_schedule.py, every loop of these kernels must wait with num > 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "tests/bench/kernel_schedule.py", "--stage", "sparse", "--kernels",
                           "_attn_kernel,_scores_kernel"], env=env, capture_output=True, text=True, timeout=900,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[5].startswith("["):
            rows[cells[0]] = json.loads(cells[5])
    assert set(rows) == {"attention forward", "attention backward", "_scores_kernel"}, done.stdout
    for kernel, waits in rows.items():
        assert waits and min(waits) > 0, (kernel, waits)
