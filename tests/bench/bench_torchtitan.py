"""The same MoE LM in longshot and in torchtitan, side by side on one GPU (issue 15).

    python tests/bench/bench_torchtitan.py [--layers 4] [--seq-len 32768] [--steps 3] [--warmup 2]
        [--attention varlen|flex] [--skip-layer]

The shape is keye-30b-a3b's LM, which is Qwen3-30B-A3B's (hidden 2048, 32 query / 4 KV heads of
128, 128 experts of width 768, top-8, vocab 151,936), cut to --layers layers; no ViT, one document
of --seq-len tokens, dense causal attention, bf16 parameters and compute, no recomputation. Each
row times forward + backward of the next-token loss (optimizer steps excluded: the frameworks'
optimizers differ, the model code is what is compared):

- longshot: model/lm.py's Megatron-core TransformerBlock, our packed attention (torch SDPA),
  Megatron's router and token dispatcher, model/grouped_experts.py;
- torchtitan (0.3's config API, or 0.2's model args; 0.2.2 is the release that runs on torch
  2.11): its Qwen3 MoE decoder built from the 30B-A3B layer config (varlen
  FlashAttention or FlexAttention, its grouped-mm experts and local token dispatcher), unwrapped
  (no FSDP, no compile);
- longshot with its experts as Megatron's SequentialMLP loop (`GroupedExperts.use_grouped = False`):
  the "before" of issue 15, same weights and code otherwise.

A second table times the MoE layer alone at the same shape (Megatron's MoELayer: router, token
dispatcher, experts; --seq-len tokens, fwd+bwd), grouped GEMM against the loop. Its TFLOP/s count
the router and the top-k expert matmuls (6 x tokens x (hidden x experts + top-k x 3 x hidden x
expert width)).

Model TFLOP/s counts the same FLOPs for both (model/flops.py on a text-only pack). torchtitan is
not a longshot dependency: tests/bench/pack_device_deps.sh packs it (titan.tar.xz) for the lent
machines. When it does not import or run on the machine's torch, its row says why.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.known_warnings import filter_known_warnings  # noqa: E402

filter_known_warnings()  # Megatron's import-time fallback notes, as the CLI drops them (its ranks too)


def _time(step, steps: int, warmup: int) -> tuple[float, float]:
    """(median seconds of one fwd+bwd, peak GiB)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def _experts_as(grouped: bool) -> None:
    from model.grouped_experts import GroupedExperts

    GroupedExperts.use_grouped = grouped


def longshot_step(cfg, ids: torch.Tensor, grouped: bool = True):
    from model.attention import CoreChoice
    from model.build import BuildOptions, build_vlm, init_megatron

    _experts_as(grouped)

    model = build_vlm(cfg, init_megatron(seed=1), CoreChoice(), BuildOptions(dtype=torch.bfloat16))
    lm = model.language.train()
    s = ids.shape[0]
    positions = torch.arange(s, device=ids.device)[None].expand(len(cfg.lm.mrope_section), s).contiguous()
    cu = torch.tensor([0, s], dtype=torch.int32, device=ids.device)
    labels = torch.cat([ids[1:], ids.new_full((1,), -100)])

    def step():
        lm.zero_grad(set_to_none=True)
        out = lm(lm.embed(ids), positions, cu, labels)
        (out.ce_sum / out.n_labels).backward()
    return step


def torchtitan_version() -> str:
    from importlib.metadata import version

    return version("torchtitan")


def torchtitan_step(cfg, ids: torch.Tensor, attention: str):
    """torchtitan's Qwen3 MoE model at our LM's shape: 0.3's config API, else 0.2's model args."""
    if torchtitan_version().startswith("0.2."):
        return _torchtitan_02_step(cfg, ids, attention)
    return _torchtitan_03_step(cfg, ids, attention)


def _torchtitan_03_step(cfg, ids: torch.Tensor, attention: str):
    from torchtitan.models.common import CosSinRoPE, Embedding, Linear
    from torchtitan.models.qwen3 import _EMBEDDING_INIT, _LINEAR_INIT, _build_qwen3_moe_layers, _qwen3_norm
    from torchtitan.models.qwen3.model import Qwen3Model

    lm = cfg.lm
    config = Qwen3Model.Config(
        vocab_size=lm.vocab, dim=lm.hidden, norm=_qwen3_norm(lm.hidden),
        tok_embeddings=Embedding.Config(num_embeddings=lm.vocab, embedding_dim=lm.hidden, param_init=_EMBEDDING_INIT),
        lm_head=Linear.Config(in_features=lm.hidden, out_features=lm.vocab, param_init=_LINEAR_INIT),
        layers=_build_qwen3_moe_layers(
            n_layers=lm.layers, dim=lm.hidden, n_heads=lm.heads, n_kv_heads=lm.kv_heads, head_dim=lm.head_dim,
            moe_hidden_dim=lm.expert_ffn, num_experts=lm.experts, top_k=lm.topk, attn_backend=attention,
            moe_comm_backend="standard",
            rope=CosSinRoPE.Config(dim=lm.head_dim, max_seq_len=ids.shape[0], theta=lm.rope_theta)))
    with torch.device("cuda"):
        model = config.build()
        model.init_states()
    model = model.to(torch.bfloat16).train()
    tokens = ids[None]
    positions = torch.arange(ids.shape[0], device=ids.device)[None]
    masks = model.get_attention_masks(positions)
    labels = torch.cat([ids[1:], ids.new_full((1,), -100)])

    def step():
        model.zero_grad(set_to_none=True)
        _loss(model(tokens, positions, masks)[0], labels).backward()
    return step


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """torchtitan's full [S, vocab] logits through longshot's loss kernel (model/cross_entropy.py):
    the loss kernel is then not what the rows compare, and its trainer's float32 copy of 32K x 152K
    logits (20 GB, and as much again for its gradient) would not fit beside the model on one GPU."""
    from model.cross_entropy import cross_entropy

    return cross_entropy(logits, labels).sum() / int((labels != -100).sum())


def _import_torchtitan_02_model():
    """torchtitan 0.2's Qwen3 model modules without its trainer: the package's __init__ and its
    train-spec protocol import the Hugging Face `datasets` stack and TensorBoard (data loading and
    logging, which this bench never runs and the GPU image lacks). Where those are missing, empty
    stand-ins that raise if anything in them is called take their place."""
    import importlib.util
    import types

    def unavailable(*_a, **_k):
        raise RuntimeError("not installed: bench_torchtitan runs no data loading or logging")

    def stand_in(name: str, **attrs) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules.setdefault(name, module)

    if importlib.util.find_spec("datasets") is None:
        stand_in("datasets", Dataset=type("Dataset", (), {}), load_dataset=unavailable)
        stand_in("datasets.distributed", split_dataset_by_node=unavailable)
    if importlib.util.find_spec("tensorboard") is None:
        stand_in("torch.utils.tensorboard", SummaryWriter=unavailable)
    from torchtitan.models.moe import MoEArgs
    from torchtitan.models.qwen3.model.args import Qwen3ModelArgs
    from torchtitan.models.qwen3.model.model import Qwen3Model
    return MoEArgs, Qwen3ModelArgs, Qwen3Model


def _torchtitan_02_step(cfg, ids: torch.Tensor, attention: str):
    MoEArgs, Qwen3ModelArgs, Qwen3Model = _import_torchtitan_02_model()
    lm = cfg.lm
    # the 30B-A3B entry of torchtitan 0.2's qwen3 configs, at our --layers and --seq-len
    args = Qwen3ModelArgs(
        vocab_size=lm.vocab, max_seq_len=ids.shape[0], head_dim=lm.head_dim, dim=lm.hidden, n_layers=lm.layers,
        n_heads=lm.heads, n_kv_heads=lm.kv_heads, qk_norm=True, rope_theta=lm.rope_theta, moe_enabled=True,
        moe_inter_dim=lm.expert_ffn, attn_type=attention, attn_mask_type="block_causal",
        moe_args=MoEArgs(num_experts=lm.experts, num_shared_experts=0, top_k=lm.topk, score_func="softmax",
                         route_norm=True, route_scale=1.0, score_before_experts=False))
    with torch.device("cuda"), torch.no_grad():  # as its trainer does: initialisation is not autograd work
        model = Qwen3Model(args)
        model.init_weights(buffer_device=torch.device("cuda"))
    model = model.to(torch.bfloat16).train()
    tokens = ids[None]
    # one document: no token equals the end-of-document id
    masks = model.get_attention_masks(tokens, SimpleNamespace(eos_id=-1))
    labels = torch.cat([ids[1:], ids.new_full((1,), -100)])

    def step():
        model.zero_grad(set_to_none=True)
        _loss(model(tokens, masks)[0], labels).backward()
    return step


def moe_layer_step(cfg, tokens: int, grouped: bool):
    """fwd+bwd of one Megatron MoELayer at the LM's shape (what issue 15 asks to see alone)."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    from model.build import init_megatron
    from model.layer_specs import moe_spec
    from model.megatron_configs import lm_transformer_config

    init_megatron(seed=1)
    _experts_as(grouped)
    tcfg = lm_transformer_config(cfg.lm, dtype=torch.bfloat16, init_std=0.02, cpu_init=False)
    layer = moe_spec(cfg.lm.experts)(tcfg, layer_number=1,
                                     pg_collection=ProcessGroupCollection.use_mpu_process_groups()).cuda()
    x0 = torch.randn(tokens, 1, cfg.lm.hidden, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x0)

    def step():
        layer.zero_grad(set_to_none=True)
        x = x0.detach().requires_grad_(True)
        y, _ = layer(x)
        y.backward(dy)
    return step


def moe_layer_flops(cfg, tokens: int) -> float:
    from model.flops import moe_matmul_params

    return 6.0 * tokens * moe_matmul_params(cfg.lm)


def _titan_label() -> str:
    try:
        return torchtitan_version()
    except Exception:  # noqa: BLE001 - not installed: the row says why when it runs
        return "(not installed)"


def flops(cfg, s: int) -> float:
    from model.flops import model_flops

    text_only = SimpleNamespace(
        num_tokens=s, pixel_patches=torch.zeros(0, 1), cu_seqlens=torch.tensor([0, s]),
        labels=torch.cat([torch.zeros(s - 1, dtype=torch.long), torch.tensor([-100])]),
        video_grid_thw=torch.zeros(0, 3, dtype=torch.long))
    return model_flops(cfg, text_only, "dense", None)


def main() -> None:
    from model.presets import preset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32_768)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-layer", action="store_true", help="skip the MoE-layer-alone table")
    p.add_argument("--profile", default="", help="write the top kernels of one more longshot step to this file")
    p.add_argument("--attention", choices=["varlen", "flex"], default="varlen",
                   help="torchtitan's attention backend (varlen: FlashAttention over documents)")
    a = p.parse_args()
    cfg = preset("keye-30b-a3b", layers=a.layers)
    ids = torch.randint(0, cfg.lm.vocab, (a.seq_len,), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    work = flops(cfg, a.seq_len)
    rows = []
    for name, make in (("longshot", lambda: longshot_step(cfg, ids)),
                       ("longshot, experts as a loop (before)", lambda: longshot_step(cfg, ids, grouped=False)),
                       (f"torchtitan {_titan_label()} ({a.attention})", lambda: torchtitan_step(cfg, ids, a.attention))):
        try:
            step = make()
            dt, peak = _time(step, a.steps, a.warmup)
            if a.profile and name == "longshot":
                from tests.bench.profiling import profile_table

                Path(a.profile).write_text(profile_table(step))
            rows.append(f"| {name} | {a.layers} | {a.seq_len:,} | {dt:.3f} | {a.seq_len / dt:,.0f} | "
                        f"{work / dt / 1e12:.0f} | {peak:.1f} |")
        except Exception as exc:  # say why, and still print the other row
            traceback.print_exc()
            rows.append(f"| {name} | {a.layers} | {a.seq_len:,} | did not run: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''} | | | |")
        step = None  # this row's model goes before the next one is built
        gc.collect()
        torch.cuda.empty_cache()
    _experts_as(True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; keye-30b-a3b LM cut to {a.layers} "
          f"layers, one document, fwd+bwd, bf16")
    print("| framework | layers | tokens | fwd+bwd s | tokens/s | model TFLOP/s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if not a.skip_layer:
        layer_table(cfg, a)


def layer_table(cfg, a) -> None:
    work, rows = moe_layer_flops(cfg, a.seq_len), []
    for name, grouped in (("grouped GEMM", True), ("SequentialMLP loop", False)):
        try:
            dt, peak = _time(moe_layer_step(cfg, a.seq_len, grouped), a.steps, a.warmup)
            rows.append(f"| {name} | {a.seq_len:,} | {dt * 1e3:.2f} | {work / dt / 1e12:.0f} | {peak:.1f} |")
        except Exception as exc:  # say why, and still print the other row
            traceback.print_exc()
            rows.append(f"| {name} | {a.seq_len:,} | did not run: {type(exc).__name__} | | |")
        torch.cuda.empty_cache()
    lm = cfg.lm
    print(f"\nMoE layer alone ({lm.experts} experts, top-{lm.topk}, hidden {lm.hidden}, expert width "
          f"{lm.expert_ffn}), fwd+bwd")
    print("| experts | tokens | fwd+bwd ms | TFLOP/s | peak GiB |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    _experts_as(True)


if __name__ == "__main__":
    main()
