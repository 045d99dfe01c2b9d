"""`longshot import-hf`: a Hugging Face Qwen3-MoE / Qwen3-VL-MoE checkpoint -> a longshot
initial checkpoint that `longshot train --preset from-hf:OUT --init-from OUT` starts from.

OUT holds the source's config.json, longshot's model config (longshot_model.json) and a Megatron
dist_checkpointing checkpoint (OUT/checkpoints/iter_0000000, written by jobs/checkpoint.py).

Streaming: the model is built on the meta device, source tensors are read one rule at a time
(model/hf_names.py), converted, and staged in files of about 1 GiB that are then memory-mapped as
the data of the model's sharded state dict for the save: host memory holds one stage and one
rule's tensors at a time, never the model.

Parameters with no source start fresh, with the initialisation a new longshot model gets
(seeded by --seed): the DSA indexer of every layer (a dense checkpoint has none; the DSA
warm-up then trains it on the dense attention it imitates), and for a text-only source the
ViT and merger (the vision config of --vision-preset).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from jobs.atomic import atomic_write_bytes
from jobs.cli import BadInput
from jobs.steps.hf_files import SafetensorsSource, read_config

SOURCE_CONFIG = "config.json"
STAGE_BYTES = 1 << 30


def register(sub) -> None:
    p = sub.add_parser("import-hf", help="import a Hugging Face Qwen3-MoE / Qwen3-VL-MoE checkpoint")
    p.add_argument("--from", dest="source", required=True, help="folder with config.json and safetensors")
    p.add_argument("--out", required=True, help="the initial checkpoint folder to write")
    p.add_argument("--vision-preset", default="keye-30b-a3b",
                   help="text-only source: the preset whose ViT shape the fresh ViT takes")
    p.add_argument("--vision-token-id", type=int,
                   help="text-only source: id of the vision placeholder (default: <|video_pad|> "
                        "in the folder's tokenizer.json)")
    p.add_argument("--dtype", choices=["source", "bf16", "fp32"], default="source")
    p.add_argument("--seed", type=int, default=1234, help="seed of the fresh parameters")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    summary = import_hf(Path(args.source), Path(args.out), vision_preset=args.vision_preset,
                        vision_token_id=args.vision_token_id, dtype=args.dtype, seed=args.seed,
                        force=args.force, progress=not args.no_progress)
    print(f"import-hf: {summary['tensors']} tensors from {args.source} ({summary['fresh']} fresh "
          f"parameters) -> {args.out} in {summary['seconds']:.1f} s")
    return 0


def source_model_config(source: Path, vision_preset: str = "keye-30b-a3b",
                        vision_token_id: int | None = None):
    """longshot's VLMConfig of a source folder; BadInput names what longshot cannot express."""
    from model.hf_config import UnsupportedConfig
    from model.presets import hf_folder_config

    try:
        return hf_folder_config(source, vision_preset, vision_token_id)
    except UnsupportedConfig as exc:
        raise BadInput(f"{source}/config.json: {exc}") from None
    except KeyError as exc:
        raise BadInput(f"{source}/config.json: {exc.args[0] if exc.args else exc}") from None


class _Stage:
    """Converted tensors gathered into ~1 GiB files, loaded back memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self.part: dict[str, torch.Tensor] = {}
        self.part_bytes = 0
        self.files: list[Path] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.contiguous()
        size = tensor.numel() * tensor.element_size()
        if tensor.untyped_storage().nbytes() != size:  # a view (one expert of a fused tensor):
            tensor = tensor.clone()  # torch.save would write the whole storage with it
        self.part[name] = tensor
        self.part_bytes += size
        if self.part_bytes >= STAGE_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.part:
            path = self.folder / f"stage-{len(self.files):05d}.pt"
            torch.save(self.part, path)
            self.files.append(path)
        self.part, self.part_bytes = {}, 0

    def mapped(self) -> dict[str, torch.Tensor]:
        self._flush()
        out = {}
        for path in self.files:
            out.update(torch.load(path, mmap=True, weights_only=True))
        return out


def _fresh_parameters(cfg, names: set[str], pg, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """The named parameters as a new longshot model initialises them (built part by part)."""
    from model.attention import Indexer
    from model.megatron_configs import lm_transformer_config, vit_transformer_config
    from model.vision_parts import build_vision_parts

    torch.manual_seed(seed)
    common = {"dtype": dtype, "init_std": cfg.init_std, "cpu_init": True}
    out: dict[str, torch.Tensor] = {}
    if any(not n.startswith("language.") for n in names):
        vit_config = vit_transformer_config(cfg.vision, **common)
        for prefix, module in build_vision_parts(cfg, vit_config, pg).items():
            out.update({f"{prefix}.{k}": v for k, v in module.state_dict().items() if v is not None})
    lm_config = lm_transformer_config(cfg.lm, **common)
    for i in range(cfg.lm.layers):
        prefix = f"language.decoder.layers.{i}.self_attention.indexer."
        if any(n.startswith(prefix) for n in names):
            indexer = Indexer(lm_config, cfg.lm.dsa.index_heads, cfg.lm.dsa.index_dim)
            out.update({prefix + k: v for k, v in indexer.state_dict().items()})
    return {n: out[n] for n in names}


def _is_fresh_ok(text_only: bool):
    def ok(name: str) -> bool:
        return ".indexer." in name or (text_only and not name.startswith("language."))
    return ok


def import_hf(source: Path, out: Path, *, vision_preset: str = "keye-30b-a3b",
              vision_token_id: int | None = None, dtype: str = "source", seed: int = 1234,
              force: bool = False, progress: bool = False) -> dict:
    from model.build import BuildOptions, build_vlm, init_megatron
    from model.hf_config import VL_FAMILIES, family, text_config
    from model.hf_names import NameMapError, check_coverage, rules_for
    from model.presets import MODEL_CONFIG

    t0 = time.perf_counter()
    hf = read_config(source)
    cfg = source_model_config(source, vision_preset, vision_token_id)
    if out.exists():
        if not force:
            raise BadInput(f"{out} exists: choose another --out or pass --force to replace it")
        shutil.rmtree(out)
    src = SafetensorsSource(source)
    kind = family(hf)
    tied = bool(hf.get("tie_word_embeddings", text_config(hf).get("tie_word_embeddings", False)))
    pg = init_megatron(seed=seed)
    model = build_vlm(cfg, pg, opts=BuildOptions(meta=True))
    ours = dict(model.named_parameters())
    fresh_ok = _is_fresh_ok(kind not in VL_FAMILIES)
    try:
        rules = check_coverage(rules_for(cfg, kind, tied, tuple(ours)), src.names(), set(ours), fresh_ok)
    except NameMapError as exc:
        raise BadInput(f"{source}: {exc}") from None
    target = {"source": None, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    try:
        written = _write(model, cfg, rules, src, source, work, target, pg, seed, progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    atomic_write_bytes(work / SOURCE_CONFIG, json.dumps(hf, indent=2).encode())
    atomic_write_bytes(work / MODEL_CONFIG, json.dumps(cfg.to_dict(), indent=2).encode())
    work.rename(out)
    return {"tensors": written, "fresh": len(ours) - written, "seconds": time.perf_counter() - t0}


def _write(model, cfg, rules, src: SafetensorsSource, source: Path, work: Path, target, pg, seed: int,
           progress: bool) -> int:
    """Convert rule by rule into the stage, add the fresh parameters, save the checkpoint from
    the memory-mapped stage."""
    from jobs.checkpoint import Checkpoints
    from jobs.progress import Progress

    ours = dict(model.named_parameters())
    sharded = model.sharded_state_dict()  # metadata only: the model lives on the meta device
    stage = _Stage(work / "stage")
    written, source_dtype = set(), None

    def put(name: str, tensor: torch.Tensor) -> None:
        for key, piece in _save_pieces(sharded, name, tensor):
            stage.add(key, piece)

    bar = Progress(sum(len(r.hf) for r in rules), desc="import-hf", enabled=progress, unit="tensor")
    for rule in rules:
        try:
            tensors = rule.to_ours([src.get(n) for n in rule.hf])
        except ValueError as exc:
            raise BadInput(f"{source}: {exc}") from None
        for name, t in zip(rule.ours, tensors, strict=True):
            _check_shape(name, t, ours[name], source)
            source_dtype = source_dtype or t.dtype
            put(name, t if target is None else t.to(target))
            written.add(name)
        bar.update(len(rule.hf))
    bar.close()
    fresh_names = set(ours) - written
    fresh_dtype = target or source_dtype or torch.float32
    for name, t in _fresh_parameters(cfg, fresh_names, pg, fresh_dtype, seed).items():
        put(name, t)
    _fill(sharded, stage.mapped())
    Checkpoints(work).save(0, {"model": sharded}, {"step": 0, "imported_from": str(source)})
    shutil.rmtree(work / "stage")
    return len(written)


def _save_pieces(sharded: dict, name: str, tensor: torch.Tensor):
    """(stage key, tensor) pairs in which parameter `name` is saved. A parameter that Megatron
    saves through a factory (an expert's fused gate|up linear, saved as two halves) is staged
    as those pieces, each with its own storage: the checkpoint writer would otherwise copy
    every such view into memory before writing (the whole model's worth of them)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    entry = sharded[name]
    if not isinstance(entry, ShardedTensorFactory):
        return [(name, tensor)]
    pieces = replace(entry, data=tensor).build()
    return [(f"{name}#{i}", p.data) for i, p in enumerate(pieces if isinstance(pieces, list) else [pieces])]


def _fill(sharded: dict, weights: dict[str, torch.Tensor]) -> None:
    """Give every sharded tensor of the (meta) model its staged data; factories are replaced by
    the pieces they build."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    for name, entry in list(sharded.items()):
        if isinstance(entry, ShardedTensorFactory):
            pieces = entry.build()
            pieces = pieces if isinstance(pieces, list) else [pieces]
            for i, piece in enumerate(pieces):
                piece.data = weights[f"{name}#{i}"]
            sharded[name] = pieces
        elif isinstance(entry, ShardedTensor):
            entry.data = weights[name]


def _check_shape(name: str, tensor: torch.Tensor, param: torch.Tensor, source: Path) -> None:
    if tuple(tensor.shape) != tuple(param.shape):
        raise BadInput(f"{source}: {name} has shape {tuple(tensor.shape)} after conversion, the model "
                       f"built from config.json expects {tuple(param.shape)}")
