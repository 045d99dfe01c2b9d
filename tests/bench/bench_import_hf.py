"""`longshot import-hf` and `export-hf` on a Qwen3-30B-A3B-shaped checkpoint of random weights:
time and memory.

    python tests/bench/bench_import_hf.py [--layers 4 8] [--work DIR] [--keep]

Writes a random bf16 source with the real shapes of Qwen3-30B-A3B (hidden 2048, 32 q / 4 kv
heads of 128, 128 experts of 768, vocab 151,936), one layer per safetensors shard, streamed (one
tensor in memory at a time), with only the first N of its 48 layers so that source, stage and
output fit on a small disk (48 layers are 61 GB per copy). Then runs `longshot import-hf` (ViT
of keye-30b-a3b, fresh) and `longshot export-hf` of its output, each in a subprocess whose
process tree is sampled every 50 ms:

- peak anonymous memory (RssAnon: what the import holds itself),
- peak resident memory (VmRSS, which also counts the page cache of the memory-mapped stage
  files and the source's mmap; the kernel can drop those pages at any time),
- wall time; per layer and extrapolated to 48 layers (each LM layer is the same work).

Runs for two depths show whether memory grows with the model (streamed: it should not).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHAPE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
         "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
         "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
         "num_experts_per_tok": 8, "norm_topk_prob": True, "rms_norm_eps": 1e-6, "hidden_act": "silu",
         "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": False,
         "max_position_embeddings": 40960, "decoder_sparse_step": 1, "mlp_only_layers": [],
         "attention_bias": False, "dtype": "bfloat16", "initializer_range": 0.02}
FULL_LAYERS = 48


def _layer_tensors(i: int, shape: dict) -> dict[str, tuple[int, ...]]:
    h, d, e, f = shape["hidden_size"], shape["head_dim"], shape["num_experts"], shape["moe_intermediate_size"]
    p = f"model.layers.{i}."
    shapes = {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
              p + "self_attn.q_proj.weight": (shape["num_attention_heads"] * d, h),
              p + "self_attn.k_proj.weight": (shape["num_key_value_heads"] * d, h),
              p + "self_attn.v_proj.weight": (shape["num_key_value_heads"] * d, h),
              p + "self_attn.o_proj.weight": (h, shape["num_attention_heads"] * d),
              p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,),
              p + "mlp.gate.weight": (e, h)}
    for x in range(e):
        shapes.update({f"{p}mlp.experts.{x}.gate_proj.weight": (f, h), f"{p}mlp.experts.{x}.up_proj.weight": (f, h),
                       f"{p}mlp.experts.{x}.down_proj.weight": (h, f)})
    return shapes


def write_source(folder: Path, layers: int, shape: dict = SHAPE) -> int:
    """A random bf16 Qwen3-MoE source of `layers` layers of `shape`, one shard each (+ one for
    the embeddings), one shard in memory at a time; returns its bytes. Norm scales are 1."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    v, h = shape["vocab_size"], shape["hidden_size"]
    shards = [{"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}]
    shards += [_layer_tensors(i, shape) for i in range(layers)]
    weight_map, total = {}, 0
    for k, shapes in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: (torch.ones(s) if n.endswith("norm.weight") else torch.randn(s, generator=gen) * 0.02)
                   .to(torch.bfloat16) for n, s in shapes.items()}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({n: name for n in tensors})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({**shape, "num_hidden_layers": layers}))
    return total


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) in bytes summed over a process and its descendants."""
    import psutil

    anon = rss = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return anon, rss


def run_import(source: Path, out: Path) -> dict:
    return run_measured(["import-hf", "--from", str(source), "--out", str(out), "--vision-token-id", "151656"], out)


def run_measured(args: list[str], out: Path) -> dict:
    """Time, peak RssAnon and VmRSS of `longshot ARGS` (its process tree), and the size of OUT."""
    cmd = [sys.executable, "-m", "jobs.cli", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    peak = {"anon": 0, "rss": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            anon, rss = _tree_memory(proc.pid)
            peak["anon"], peak["rss"] = max(peak["anon"], anon), max(peak["rss"], rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - t0, **peak,
            "out_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the source and output")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_import_"))
    rows = []
    for layers in args.layers:
        src, out = work / f"src{layers}", work / f"init{layers}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        size = write_source(src, layers)
        made = time.perf_counter() - t0
        res = run_import(src, out)
        if not args.keep:  # the export does not read the source: free its disk first
            shutil.rmtree(src, ignore_errors=True)
        exp = run_measured(["export-hf", "--run", str(out), "--out", str(work / f"export{layers}")],
                           work / f"export{layers}")
        rows.append({"layers": layers, "source_gb": size / 1e9, "write_source_s": made, **res,
                     "export": exp})
        print(f"{layers} layers: source {size / 1e9:.2f} GB (written in {made:.0f} s); import "
              f"{res['seconds']:.1f} s, peak anon {res['anon'] / 2**30:.2f} GiB, peak rss "
              f"{res['rss'] / 2**30:.2f} GiB, output {res['out_bytes'] / 1e9:.2f} GB; export "
              f"{exp['seconds']:.1f} s, peak anon {exp['anon'] / 2**30:.2f} GiB, peak rss "
              f"{exp['rss'] / 2**30:.2f} GiB, output {exp['out_bytes'] / 1e9:.2f} GB", flush=True)
        if not args.keep:
            for folder in (out, work / f"export{layers}"):
                shutil.rmtree(folder, ignore_errors=True)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        for what, secs in (("import", lambda r: r["seconds"]), ("export", lambda r: r["export"]["seconds"])):
            per_layer = (secs(b) - secs(a)) / (b["layers"] - a["layers"])
            fixed = secs(a) - per_layer * a["layers"]
            print(f"{what}: per layer {per_layer:.1f} s, fixed {fixed:.1f} s: {FULL_LAYERS} layers ~ "
                  f"{fixed + per_layer * FULL_LAYERS:.0f} s (extrapolated)")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
