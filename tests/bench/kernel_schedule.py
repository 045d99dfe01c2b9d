"""How the DSA kernels compile for Hopper at the production shape, on a machine without a GPU:
registers, spilled bytes and shared memory per program (ptxas -v), and whether each pipelined
loop's copies overlap its work.

    python tests/bench/kernel_schedule.py [--stage sparse,warmup] [--set _kl_kernel:num_stages=3,BN=32 ...] \
        [--triton-site DIR]

``--triton-site``: compile with the Triton installed under DIR instead of this venv's (e.g.
``pip install --no-deps --target DIR triton==3.6.0``, the version of the lent GPUs' image, whose
pipeliner can differ from the venv's); the launches are still recorded with this venv's interpreter.

Why: the block-mode programs run one to an SM (255 registers), so nothing hides a load's latency
but the loop's own prefetch, and Triton's software pipeliner places it per loop. In the sm_90
TTGIR a pipelined loop starts each iteration with `ttg.async_wait {num = N}` on its copies: at
N = 0 the copies issued for this iteration, at the end of the previous one, must all have landed,
so they overlapped nothing of the previous iteration's work; at N > 0 they ran under a whole
iteration. At 2 stages every loop waits with N = 0; from 3 on, loops of direct loads get N > 0.
A loop that gathers rows through an index tile loaded at its top level keeps N = 0 at any depth
(the pipeliner makes the index an async copy with its own stage and the gathers a distance of
one); with the index load under an `if` it stays a register load and the gathers get the loop's
depth (tests/bench/RESULTS.md, 2026-12-07, early morning and night).

One DSA layer's forward and backward run under TRITON_INTERPRET at 32 query / 4 KV heads of 128,
indexer 8 x 128, bf16, T = 256, block mode (or --granularity token [--token-merge M]; sparse and warm-up stage),
recording every kernel launch (tests/kernel_launches.py); each recorded specialisation is then
compiled for sm_90 with its 16-byte alignment hints, with --set overriding launch options or
constexprs of a kernel.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

RECORD = """
import json, sys
import torch
from tests.kernel_launches import recorded_launches, unique
from model.dsa import DSAConfig, dsa_attention

g = torch.Generator().manual_seed(0)
t, hq, hkv, d, hi = 256, 32, 4, 128, 8
bf = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).requires_grad_()
cu = torch.tensor([0, t], dtype=torch.int32)
with recorded_launches() as launches:
    for stage in sys.argv[2].split(","):
        cfg = DSAConfig(index_heads=hi, index_dim=d, topk=128, granularity=sys.argv[3], block_q=64, stage=stage,
                        token_merge=int(sys.argv[4]))
        q, k, v = bf(t, hq, d), bf(t, hkv, d), bf(t, hkv, d)
        qi, ki, wi = bf(t, hi, d), bf(t, d), bf(t, hi)
        out, loss = dsa_attention(q, k, v, qi, ki, wi, cu, cfg)
        (out.float().square().sum() + loss).backward()
json.dump(unique(launches), open(sys.argv[1], "w"))
"""

_WAIT = re.compile(r"= ttg\.async_wait %[^{]*\{num = (\d+)")


def loop_waits(ttgir: str) -> list[int]:
    """num of each token wait at the top level of an scf.for body (prologue and drain waits are
    outside the loops; a loop's own wait is what decides the overlap)."""
    waits, loops = [], []  # loops: indentation of each open scf.for
    for line in ttgir.splitlines():
        ind = len(line) - len(line.lstrip())
        while loops and ind <= loops[-1] and line.strip().startswith("}"):
            loops.pop()
        m = _WAIT.search(line)
        if m and loops and ind == loops[-1] + 2:
            waits.append(int(m.group(1)))
        if "scf.for" in line:
            loops.append(ind)
    return waits


def record(stages: str, path: str, granularity: str = "block", token_merge: int = 1) -> list[dict]:
    path_env = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path_env)
    subprocess.run([sys.executable, "-c", RECORD, path, stages, granularity, str(token_merge)], env=env, check=True,
                   cwd=ROOT)
    with open(path) as f:
        return json.load(f)


def overrides(items: list[str]) -> dict[str, dict]:
    """--set KERNEL:key=value,... -> {kernel: {key: int value}} (num_warps / num_stages / maxnreg are
    launch options, anything else a constexpr)."""
    out: dict[str, dict] = {}
    for item in items:
        name, _, kv = item.partition(":")
        try:
            out.setdefault(name, {}).update({k: int(v) for k, v in (p.split("=") for p in kv.split(","))})
        except ValueError:
            raise SystemExit(f"--set {item!r}: expected KERNEL:key=integer[,key=integer...]") from None
    return out


def compile_spec(spec: dict, over: dict) -> dict:
    """Registers, spills, shared memory and the in-loop async waits of one specialisation."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    opts = dict(spec["options"])
    ce = dict(spec["constexprs"])
    for k, v in over.items():
        (opts if k in ("num_warps", "num_stages", "maxnreg") else ce)[k] = v
    names = list(spec["signature"])
    attrs = {(i,): [["tt.divisibility", 16]] for i in spec.get("aligned", [])
             if spec["signature"][names[i]] != "constexpr"}
    k = triton.compile(ASTSource(fn=fn, signature=spec["signature"], constexprs=ce, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=opts)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    info = subprocess.run([ptxas, "-v", "-arch=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                          text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", info.stderr)
    spill = re.search(r"(\d+) bytes spill stores", info.stderr)
    return {"regs": int(regs.group(1)) if regs else None, "spill": int(spill.group(1)) if spill else 0,
            "smem_kib": k.metadata.shared / 1024, "waits": loop_waits(k.asm["ttgir"]),
            "launch": (ce.get("BN"), opts.get("num_warps"), opts.get("num_stages"))}


def label(spec: dict) -> str:
    ce = spec["constexprs"]
    if spec["name"] == "_attn_kernel":
        return "attention " + ("backward" if ce.get("BWD") else "forward")
    if spec["name"] == "_kl_kernel":
        return "indexer KL" + (" (sparse)" if ce.get("HAS_SEL") else " (dense)")
    return spec["name"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="sparse,warmup")
    ap.add_argument("--granularity", default="block", choices=("block", "token"), help="DSA selection mode")
    ap.add_argument("--token-merge", type=int, default=1, help="token mode: queries a merged group (merge.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KERNEL:key=value,...")
    ap.add_argument("--kernels", default="_attn_kernel,_kl_kernel", help="kernels to compile ('' = all)")
    ap.add_argument("--triton-site", default="", help="a folder holding the Triton to compile with")
    ap.add_argument("--specs", default="", help=argparse.SUPPRESS)  # recorded launches (the --triton-site child)
    a = ap.parse_args()
    over = overrides(a.set)
    wanted = set(filter(None, a.kernels.split(",")))
    if a.specs:
        with open(a.specs) as f:
            specs = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "launches.json")
            specs = record(a.stage, path, a.granularity, a.token_merge)
            if a.triton_site:  # the same launches, compiled by a child that imports the other Triton first
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(a.triton_site), ROOT]))
                argv = [sys.executable, os.path.abspath(__file__), "--specs", path, "--kernels", a.kernels]
                return subprocess.run(argv + [f"--set={v}" for v in a.set], env=env, cwd=ROOT).returncode
    import triton

    print(f"# compiled for sm_90 by Triton {triton.__version__}", flush=True)
    lines = ["| kernel | (BN, warps, stages) | registers | spilled bytes | shared KiB | in-loop waits (num) "
             "| copies overlap a whole iteration |", "|---|---|---|---|---|---|---|"]
    for spec in specs:
        if wanted and spec["name"] not in wanted:
            continue
        r = compile_spec(spec, over.get(spec["name"], {}))
        zeros = r["waits"].count(0)
        overlap = "none pipelined" if not r["waits"] else ("yes" if not zeros else
                                                           f"no ({zeros} of {len(r['waits'])} loops)")
        lines.append(f"| {label(spec)} | {r['launch']} | {r['regs']} | {r['spill']} | {r['smem_kib']:.0f} | "
                     f"{r['waits']} | {overlap} |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
