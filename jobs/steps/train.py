"""`longshot train` and `longshot resume`: the resumable training job (see train_loop.py).

`train` takes the run's config from its options and refuses a folder that holds a run with
another config (exit 4) unless --force; it resumes by itself from the latest checkpoint when
the config is the same. `resume RUN` continues a run with the config stored in its folder.
Several processes (torchrun) share one run folder; rank 0 holds its lock and writes metrics.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.cli import BadInput, resolve_chat_format

if TYPE_CHECKING:
    from jobs.steps.train_loop import TrainConfig

DEFAULT_WORKERS = 2


def _tokenizer_ids(path: str, chat_format: str | None, preset_name: str) -> dict:
    """The vision placeholder id of the tokenizer the dataset was made with (its chat format's
    placeholder), and its vocab size unless the model's is fixed by imported weights."""
    from tokenizers import Tokenizer

    from model.presets import FROM_HF, preset

    if not Path(path).is_file():
        raise BadInput(f"{path}: tokenizer file not found")
    fmt = resolve_chat_format(chat_format, path)
    tok = Tokenizer.from_file(path)
    vision = tok.token_to_id(fmt.placeholder)
    if vision is None:
        raise BadInput(f"{path}: the tokenizer has no {fmt.placeholder} token (chat format {fmt.name!r})")
    if not preset_name.startswith(FROM_HF):
        return {"vocab": tok.get_vocab_size(), "vision_token_id": vision}
    vocab = preset(preset_name).lm.vocab
    if tok.get_vocab_size() > vocab:
        raise BadInput(f"{path}: {tok.get_vocab_size()} tokens, more than the imported model's {vocab}")
    return {"vision_token_id": vision}


def config_from_args(args) -> TrainConfig:
    from jobs.steps.train_loop import TrainConfig

    overrides = {}
    if args.tokenizer:
        overrides.update(_tokenizer_ids(args.tokenizer, args.chat_format, args.preset))
    if args.lm_layers:  # a preset's shape with fewer LM layers: to fit a large shape on few GPUs
        overrides["layers"] = args.lm_layers
    if args.synthetic:
        data = {"synthetic": {"packs": args.synthetic, "seq_len": args.seq_len}}
        if args.synthetic_text != "progression":  # the default stays out of the config (its hash)
            data["synthetic"]["text"] = args.synthetic_text
    else:
        if not (args.packs and args.data):
            raise BadInput("give --data and --packs (a dataset and its pack plan), or --synthetic N")
        for p in (args.packs, args.data):
            if not Path(p).exists():
                raise BadInput(f"{p}: not found")
        if not args.tokenizer:
            raise BadInput("--tokenizer is needed with --data: it gives the vocabulary and the vision token id")
        data = {"plan": str(Path(args.packs).resolve()), "dataset": str(Path(args.data).resolve())}
        _check_video_layout(args.data, args.preset)
        if args.retrieval_fraction:
            data["retrieval"] = _retrieval(args, data["plan"])
    optim = {k: v for k, v in {"lr": args.lr, "min_lr": args.min_lr,
                               "lr_warmup_steps": args.lr_warmup_steps}.items() if v is not None}
    from model.dsa.config import MAX_TOKEN_MERGE

    if args.dsa_warmup_lr is not None and not args.dsa_warmup_lr > 0:
        raise BadInput(f"--dsa-warmup-lr {args.dsa_warmup_lr}: must be a positive learning rate")

    for flag, m in (("--dsa-token-merge", args.dsa_token_merge),
                    ("--dsa-token-merge-backward", args.dsa_token_merge_backward)):
        if m is not None and not 1 <= m <= MAX_TOKEN_MERGE:
            raise BadInput(f"{flag} {m}: must be 1 to {MAX_TOKEN_MERGE} (one bit per query of a group)")
    if args.dsa_block_rule is not None:
        from jobs.steps.eval_model import block_rule_fields

        block_rule_fields(args.dsa_block_rule)  # a bad rule is refused before anything runs
    dense_layers = None
    if args.dsa_dense_layers is not None:
        try:
            dense_layers = sorted({int(x) for x in args.dsa_dense_layers.split(",") if x.strip()})
        except ValueError:
            raise BadInput(f"--dsa-dense-layers {args.dsa_dense_layers!r}: give LM layer indices, "
                           "comma-separated, e.g. 0,1") from None
    dsa = {k: v for k, v in {"topk": args.dsa_topk, "granularity": args.dsa_granularity,
                             "token_merge": args.dsa_token_merge,
                             "token_merge_backward": args.dsa_token_merge_backward, "block_rule": args.dsa_block_rule,
                             "dense_layers": dense_layers}.items()
           if v is not None}
    return TrainConfig(preset=args.preset, model_overrides=overrides, steps=args.steps,
                       seed=args.seed, attention=args.attention,
                       dsa_warmup_steps=args.dsa_warmup_steps, dsa_warmup_lr=args.dsa_warmup_lr, dsa=dsa,
                       optim=optim,
                       dtype=args.dtype, recompute=args.recompute, save_every=args.save_every,
                       keep=args.keep, data=data, init_from=args.init_from, cp=args.cp, ep=args.ep,
                       vit_layout=args.vit_layout)


def _retrieval(args, plan: str) -> dict:
    """--retrieval-*: the retrieval samples mixed in (jobs/steps/train_retrieval.py); documents grow
    to the plan's sequence length unless --retrieval-max-len says less."""
    from shards.packing import PackPlan

    plan_path = Path(plan) / "packs.parquet" if Path(plan).is_dir() else Path(plan)
    pack_tokens = PackPlan.read(plan_path).max_tokens
    max_len = args.retrieval_max_len or pack_tokens
    if not 0 < args.retrieval_fraction <= 1 or not 0 < args.retrieval_min_len <= max_len <= pack_tokens:
        raise BadInput(f"--retrieval-fraction must be within (0, 1] and 0 < --retrieval-min-len <= "
                       f"--retrieval-max-len <= {pack_tokens} (the packs' sequence length)")
    fmt = resolve_chat_format(args.chat_format, args.tokenizer)
    return {"fraction": args.retrieval_fraction, "min_len": args.retrieval_min_len, "max_len": max_len,
            "pack_tokens": pack_tokens,
            "tokenizer": str(Path(args.tokenizer).resolve()), "chat_format": fmt.to_dict()}


def _check_video_layout(data_dir: str, preset_name: str) -> None:
    """Videos laid out for another model family would train silently wrong: refused, naming both."""
    from jobs.steps.encode import dataset_video_layout
    from model.presets import preset

    try:
        wanted = preset(preset_name).video_layout
    except (KeyError, ValueError) as exc:
        raise BadInput(f"--preset {preset_name}: {exc}") from None
    made = dataset_video_layout(data_dir)
    if made is not None and made != wanted:
        raise BadInput(f"{data_dir}: its videos are laid out as {made!r}, but --preset {preset_name} "
                       f"was trained with {wanted!r}; run preprocess again with --preset {preset_name}")


def _run(cfg, run_dir: str, force: bool, args) -> int:
    from jobs.steps.train_loop import flush_print, train
    from parallel.launch import end_ranks

    summary = train(cfg, Path(run_dir), force=force, workers=args.workers,
                    jpeg_on_device=args.jpeg_on_device, log=flush_print)
    end_ranks()
    done = len(summary["losses"])
    flush_print(f"train: {done} steps run now (from step {summary['start_step']}) of {cfg.steps}; "
                f"metrics in {Path(run_dir) / 'metrics.jsonl'}, checkpoints in "
                f"{Path(run_dir) / 'checkpoints'}")
    return 0


def _relaunch(args, argv: list[str]) -> int | None:
    """With --nproc N > 1 and no launcher around us: run this command as N ranks."""
    from parallel.launch import launch, under_launcher

    if args.nproc <= 1 or under_launcher():
        return None
    return launch(args.nproc, args.launcher, argv, args.ray_address)


_LAUNCH_FLAGS = ("--nproc", "--launcher", "--ray-address")  # the launcher's, not the ranks'


def _argv_without_launch(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in _LAUNCH_FLAGS:
            skip = True
            continue
        if a.startswith(tuple(f + "=" for f in _LAUNCH_FLAGS)):
            continue
        out.append(a)
    return out


def run_train(args) -> int:
    cfg = config_from_args(args)
    _check_model(cfg)
    code = _relaunch(args, _argv_without_launch(args.argv))
    if code is not None:
        return code
    return _run(cfg, args.run, args.force, args)


def _check_model(cfg) -> None:
    """The model the options describe, refused here (before any rank starts) when it cannot exist,
    e.g. --dsa-dense-layers past the preset's last layer."""
    from jobs.steps.train_loop import model_config

    try:
        model_config(cfg)
    except ValueError as e:
        raise BadInput(f"--preset {cfg.preset} with these options: {e}") from None


def run_resume(args) -> int:
    from jobs.steps.train_loop import stored_config

    code = _relaunch(args, _argv_without_launch(args.argv))
    if code is not None:
        return code
    return _run(stored_config(Path(args.run)), args.run, False, args)


def register(sub) -> None:
    p = sub.add_parser("train", help="train the VLM on packed sequences (resumes by itself)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="run folder: checkpoints, metrics.jsonl, tensorboard")
    p.add_argument("--data", help="dataset folder written by preprocess")
    p.add_argument("--packs", help="pack plan (packs.parquet or its folder)")
    p.add_argument("--tokenizer", help="the tokenizer.json the dataset was made with")
    p.add_argument("--chat-format", help="the dataset's chat format, for its vision placeholder: "
                   "longshot | qwen | a JSON file (default: the tokenizer folder's, else longshot)")
    p.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic packs instead")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per synthetic pack")
    p.add_argument("--synthetic-text", choices=["progression", "recall"], default="progression",
                   help="synthetic answers: an arithmetic progression, or random ids repeated (long-range recall)")
    p.add_argument("--retrieval-fraction", type=float, default=0.0,
                   help="share of steps that read needle-in-a-haystack documents made of --data's clips and text")
    p.add_argument("--retrieval-min-len", type=int, default=4096,
                   help="their length at the start; it doubles over the run up to --retrieval-max-len")
    p.add_argument("--retrieval-max-len", type=int, help="their final length (default: the packs' sequence length)")
    p.add_argument("--preset", default="tiny",
                   help="tiny | small | keye-30b-a3b | from-hf:DIR (an import-hf folder or a HF folder)")
    p.add_argument("--lm-layers", type=int, help="override the preset's number of LM layers")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--attention", choices=["dense", "dsa"], default="dense")
    p.add_argument("--dsa-warmup-steps", type=int, default=0,
                   help="with --attention dsa: steps that train only the indexer on dense attention")
    p.add_argument("--dsa-warmup-lr", type=float, metavar="LR",
                   help="peak LR of the indexer warm-up (default --lr): the DeepSeek-V3.2 recipe warms the "
                        "indexer up at 1e-3, far above the sparse stage's LR")
    p.add_argument("--dsa-topk", type=int)
    p.add_argument("--dsa-granularity", choices=["token", "block"])
    p.add_argument("--dsa-block-rule", metavar="RULE",
                   help="block granularity: how a block of queries scores keys, max | sum | pooled, optionally "
                        "+coarseN (pooled scores pick N*k candidates first); default max+coarse2")
    p.add_argument("--dsa-dense-layers", metavar="I,J",
                   help="LM layers (0-based) that keep dense attention with --attention dsa; their indexers "
                        "stay untrained (early layers that attend diffusely lose the most to any top-k)")
    p.add_argument("--dsa-token-merge", type=int, metavar="M",
                   help="token granularity on a GPU: M (2-16) neighbouring queries share one gathered key list "
                        "(the union of their selections); same result, fewer bytes read")
    p.add_argument("--dsa-token-merge-backward", type=int, metavar="M",
                   help="token granularity on a GPU, with --dsa-token-merge 1: the attention's backward alone "
                        "over groups of M (2-16) neighbouring queries; same result, fewer float32 adds")
    p.add_argument("--lr", type=float)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--lr-warmup-steps", type=int)
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--recompute", action="store_true", help="recompute layer activations in backward")
    p.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep", type=int, default=2, help="checkpoints to keep (besides the "
                   "one at the end of a DSA warm-up, always kept)")
    p.add_argument("--init-from", help="a checkpoint folder (iter_NNNNNNN) to take model weights from")
    p.add_argument("--force", action="store_true", help="start over when the run folder holds another config")
    p.add_argument("--cp", type=int, default=1, help="LM context parallel size")
    p.add_argument("--ep", type=int, default=1, help="LM expert parallel size")
    p.add_argument("--vit-layout", choices=["balanced", "owner", "replicated"], default="balanced",
                   help="where the ViT's frame groups run under context parallel")
    _launch_options(p)
    _loader_options(p)
    p.set_defaults(func=run_train)
    r = sub.add_parser("resume", help="continue a training run with its stored config")
    r.add_argument("run", help="the run folder")
    _loader_options(r)
    _launch_options(r)
    r.set_defaults(func=run_resume)


def _loader_options(p) -> None:
    """How packs are loaded (not part of the run's config: a resume may change them)."""
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="data loader processes")
    p.add_argument("--jpeg-on-device", action="store_true",
                   help="decode JPEG frames on the GPU (nvJPEG) instead of in the loader processes")


def _launch_options(p) -> None:
    p.add_argument("--nproc", type=int, default=1,
                   help="ranks to start (cp x dp of them); 1 = this process (or already launched)")
    p.add_argument("--launcher", choices=["torchrun", "ray"], default="torchrun")
    p.add_argument("--ray-address", default=None,
                   help="with --launcher ray: the cluster to join (default $RAY_ADDRESS, else a local Ray on loopback)")
