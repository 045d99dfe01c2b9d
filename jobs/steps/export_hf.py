"""`longshot export-hf`: a run's latest checkpoint (or an import-hf folder) -> a Hugging Face
folder that transformers loads (config.json + sharded safetensors, same names as the source).

The run must have started from an imported model (`--preset from-hf:DIR`): the export writes
DIR's config.json with longshot's shapes and reverses the name map of model/hf_names.py. The
DSA indexer weights go under `...self_attn.indexer.*`, which transformers' Qwen3 models do not
read (it lists them as unexpected keys and ignores them), and which import-hf reads back.

Streamed: the model is built on the meta device (its names, shapes and checkpoint layout
only) and the checkpoint is read one layer's tensors at a time, converted and handed to the
safetensors writer, so host memory holds one layer and the shard being written (<= 4 GiB), never
the model: a 30B-A3B export would otherwise need some 60 GB of host memory in bf16.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from itertools import groupby
from pathlib import Path

import torch

from jobs.atomic import atomic_write_bytes
from jobs.cli import BadInput
from jobs.steps.hf_files import SafetensorsWriter, read_config


def register(sub) -> None:
    p = sub.add_parser("export-hf", help="export a run's model as a Hugging Face checkpoint")
    p.add_argument("--run", required=True, help="a run folder, or a folder written by import-hf")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write")
    p.add_argument("--dtype", choices=["source", "bf16", "fp32"], default="source",
                   help="tensor dtype; source = the dtype named in the source config.json")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    t0 = time.perf_counter()
    n = export_hf(Path(args.run), Path(args.out), dtype=args.dtype, force=args.force, progress=not args.no_progress)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(f"export-hf: {n} tensors ({size / 1e6:,.1f} MB) from {args.run} -> {args.out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def run_model(run_dir: Path):
    """(VLMConfig, source config.json, folder of the source) of a run or an import-hf folder."""
    from jobs.steps.train_loop import STATE_DIR, stored_config
    from model.presets import FROM_HF, MODEL_CONFIG, preset

    if (run_dir / MODEL_CONFIG).is_file():  # an import-hf folder
        return preset(FROM_HF + str(run_dir)), read_config(run_dir)
    if not (run_dir / STATE_DIR / "job.json").is_file():
        raise BadInput(f"{run_dir}: neither a training run nor an import-hf folder")
    tc = stored_config(run_dir)
    if not tc.preset.startswith(FROM_HF):
        raise BadInput(f"{run_dir}: the run's preset {tc.preset!r} was not imported; export-hf needs "
                       f"a run started with --preset {FROM_HF}DIR")
    return preset(tc.preset, **tc.model_overrides), read_config(Path(tc.preset[len(FROM_HF):]))


def _dtype(choice: str, source: dict) -> torch.dtype:
    if choice != "source":
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[choice]
    name = source.get("dtype") or source.get("torch_dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def export_hf(run_dir: Path, out: Path, *, dtype: str = "source", force: bool = False,
              progress: bool = False) -> int:
    from jobs.checkpoint import Checkpoints
    from jobs.progress import Progress
    from jobs.steps.train_loop import init_checkpoint
    from model.build import BuildOptions, build_vlm, init_megatron
    from model.hf_config import export_config, family
    from model.hf_names import check_coverage, rules_for

    cfg, source = run_model(run_dir)
    if not Checkpoints(run_dir).steps() and not (run_dir / "metadata.json").is_file():
        raise BadInput(f"{run_dir}: no checkpoint to export (nothing in {run_dir / 'checkpoints'})")
    if out.exists():
        if not force:
            raise BadInput(f"{out} exists: choose another --out or pass --force to replace it")
        shutil.rmtree(out)
    out_dtype = _dtype(dtype, source)
    # bf16 exports read the checkpoint as bf16: half the host memory of fp32
    build_dtype = torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32
    model = build_vlm(cfg, init_megatron(), opts=BuildOptions(dtype=build_dtype, meta=True))
    names = tuple(n for n, _ in model.named_parameters())
    rules = rules_for(cfg, family(source), parameter_names=names)
    every_source_name = {n for r in rules for n in r.hf}
    check_coverage(rules, every_source_name, set(names), lambda name: False)
    ckpt, verified = init_checkpoint(run_dir)
    sharded = model.sharded_state_dict()  # metadata only: the model lives on the meta device
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    writer = SafetensorsWriter(work)
    groups = [list(g) for _, g in groupby(rules, key=lambda rule: layer_of(rule.ours[0]))]
    bar = Progress(len(groups), desc="export-hf", enabled=progress, unit="part")  # a layer, or what lies between
    parts = ({n: sharded[n] for rule in group for n in rule.ours} for group in groups)
    for group, params in zip(groups, Checkpoints(run_dir).read_model_parts(ckpt, parts, verified=verified),
                             strict=True):
        for rule in group:
            for name, t in zip(rule.hf, rule.to_hf([params[n] for n in rule.ours]), strict=True):
                writer.add(name, t.to(out_dtype))
        bar.update()
    bar.close()
    writer.close()
    atomic_write_bytes(work / "config.json", json.dumps(export_config(cfg, source), indent=2).encode())
    work.rename(out)
    return len(every_source_name)


_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to (``language.decoder.layers.3``), or "" for the parts
    outside the layer stacks (embeddings, head, patch embedding, merger): the unit the export
    reads at once."""
    m = _LAYER.match(name)
    return m.group(1) if m else ""

