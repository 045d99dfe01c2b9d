"""import-hf / export-hf against transformers' own Qwen3-MoE: tiny random models built and saved
locally, imported, and run by both sides on the same tokens (fp32)."""
from __future__ import annotations

import json

import pytest
import torch

from jobs.cli import BadInput
from jobs.steps.import_hf import import_hf
from tests.jobs.hf_models import VISION_TOKEN, hf_logits, longshot_logits, save_qwen3_moe

pytest.importorskip("transformers")


def _assert_logits_match(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max()
    err = (ours - theirs).abs().max()
    assert err <= 1e-4 * scale, f"max abs error {err:.3g} vs logits scale {scale:.3g}"


@pytest.mark.parametrize("variant", [
    {"norm_topk_prob": True},
    {"norm_topk_prob": False, "tie_word_embeddings": True},
])
def test_imported_qwen3_moe_gives_transformers_logits(tmp_path, variant):
    src = save_qwen3_moe(tmp_path / "hf", **variant)
    import_hf(src, tmp_path / "init", vision_preset="tiny", vision_token_id=VISION_TOKEN)
    ids = torch.randint(0, 299, (37,), generator=torch.Generator().manual_seed(1))
    theirs = hf_logits(src, ids)
    _assert_logits_match(longshot_logits(tmp_path / "init", ids), theirs)


def test_unknown_and_missing_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    src = save_qwen3_moe(tmp_path / "hf")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.k_norm.weight"
    shard = src / index["weight_map"][name]
    tensors = load_file(shard)
    tensors["model.layers.1.self_attn.extra_scale"] = tensors.pop(name)
    save_file(tensors, shard, metadata={"format": "pt"})
    index["weight_map"]["model.layers.1.self_attn.extra_scale"] = index["weight_map"].pop(name)
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BadInput) as err:
        import_hf(src, tmp_path / "init", vision_preset="tiny", vision_token_id=VISION_TOKEN)
    assert "model.layers.1.self_attn.extra_scale" in str(err.value)
    assert name in str(err.value)
    assert not (tmp_path / "init").exists()


def test_unsupported_architecture_is_refused_with_the_field(tmp_path, capsys):
    from jobs.cli import main as longshot

    src = save_qwen3_moe(tmp_path / "hf", mlp_only_layers=[1])
    with pytest.raises(BadInput, match="mlp_only_layers"):
        import_hf(src, tmp_path / "init", vision_preset="tiny", vision_token_id=VISION_TOKEN)
    # the command: exit 2 and one line naming the field
    assert longshot(["import-hf", "--from", str(src), "--out", str(tmp_path / "init"),
                     "--vision-preset", "tiny", "--vision-token-id", str(VISION_TOKEN)]) == 2
    assert "mlp_only_layers" in capsys.readouterr().err


def _checkpoint_tensors(init_dir, weights=None) -> dict:
    from jobs.steps.train_loop import load_init_weights
    from model.build import build_vlm, init_megatron
    from model.presets import preset

    model = build_vlm(preset(f"from-hf:{init_dir}"), init_megatron())
    return load_init_weights(weights or init_dir, model.sharded_state_dict())


def test_export_reimports_bit_identical_and_loads_in_transformers(tmp_path):
    from safetensors import safe_open

    from jobs.steps.export_hf import export_hf

    src = save_qwen3_moe(tmp_path / "hf")
    import_hf(src, tmp_path / "init", vision_preset="tiny", vision_token_id=VISION_TOKEN)
    export_hf(tmp_path / "init", tmp_path / "export")
    import_hf(tmp_path / "export", tmp_path / "again", vision_preset="tiny", vision_token_id=VISION_TOKEN,
              seed=99)  # another seed: a fresh parameter would differ
    first, second = _checkpoint_tensors(tmp_path / "init"), _checkpoint_tensors(tmp_path / "again")
    names = [k for k in first if not k.endswith("_extra_state")]
    # the indexer and the (text-only source's) ViT travel under their own names
    assert any(".indexer." in k for k in names) and any(k.startswith("vision.") for k in names)
    for k in names:
        assert torch.equal(first[k], second[k]), k
    # the source's own tensors come back bit-identical under their own names
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    exported = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) <= set(exported)
    assert {k for k in exported if k not in index} == {
        k for k in exported if ".indexer." in k or k.startswith("longshot.")}
    for name, shard in index.items():
        with safe_open(src / shard, "pt") as a, safe_open(tmp_path / "export" / exported[name], "pt") as b:
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name
    ids = torch.randint(0, 299, (29,), generator=torch.Generator().manual_seed(2))
    _assert_logits_match(hf_logits(tmp_path / "export", ids), hf_logits(src, ids))


def test_a_trained_run_exports_and_transformers_gives_its_logits(tmp_path):
    """The export of a run (not of an import folder): DSA-trained weights, its checkpoint holding
    optimizer state too, read one layer at a time from the stacked tensors Megatron stores."""
    from jobs.cli import main as longshot
    from jobs.steps.export_hf import export_hf

    src = save_qwen3_moe(tmp_path / "hf")
    import_hf(src, tmp_path / "init", vision_preset="tiny", vision_token_id=VISION_TOKEN)
    run = tmp_path / "run"
    assert longshot(["train", "--run", str(run), "--preset", f"from-hf:{tmp_path / 'init'}", "--init-from",
                     str(tmp_path / "init"), "--synthetic", "4", "--seq-len", "256", "--attention", "dsa",
                     "--dsa-warmup-steps", "1", "--dsa-topk", "16", "--steps", "3", "--lr", "1e-2",
                     "--workers", "0"]) == 0
    export_hf(run, tmp_path / "export")
    ids = torch.randint(0, 299, (31,), generator=torch.Generator().manual_seed(3))
    theirs = hf_logits(tmp_path / "export", ids)
    _assert_logits_match(longshot_logits(tmp_path / "init", ids, weights=run), theirs)
    assert not torch.allclose(theirs, hf_logits(src, ids), atol=1e-3)  # the trained weights, not the import's
    import_hf(tmp_path / "export", tmp_path / "again", vision_preset="tiny", vision_token_id=VISION_TOKEN)
    trained, again = _checkpoint_tensors(tmp_path / "init", run), _checkpoint_tensors(tmp_path / "again")
    names = [k for k in trained if not k.endswith("_extra_state")]
    assert any(".indexer." in k for k in names)
    for k in names:
        assert torch.equal(trained[k], again[k]), k


def test_imported_qwen3_vl_moe_gives_transformers_logits_on_text_and_video(tmp_path):
    from model.presets import preset
    from tests.jobs.hf_models import (
        hf_video_features,
        hf_vl_logits,
        longshot_video_features,
        longshot_vl_logits,
        save_qwen3_vl_moe,
        video_sample,
    )

    src = save_qwen3_vl_moe(tmp_path / "hf")
    import_hf(src, tmp_path / "init")
    # `--preset from-hf:` reads the same shape from the Hugging Face folder and from the import
    assert preset(f"from-hf:{src}") == preset(f"from-hf:{tmp_path / 'init'}")
    assert preset(f"from-hf:{src}").vision.patch == 16
    ids, patches, grid = video_sample()
    # the vision side on its own (its share of the logits is small in a random model)
    tokens, deep = longshot_video_features(tmp_path / "init", patches, grid)
    hf_tokens, hf_deep = hf_video_features(src, patches, grid)
    assert len(deep) == len(hf_deep) == 2
    for ours, theirs in [(tokens, hf_tokens), *zip(deep, hf_deep, strict=True)]:
        _assert_logits_match(ours, theirs)
    theirs, positions = hf_vl_logits(src, ids, patches, grid)
    assert int(positions[1].max()) != int(positions[2].min())  # the video has 2-D positions
    _assert_logits_match(longshot_vl_logits(tmp_path / "init", ids, patches, grid, positions), theirs)
    text = ids[ids < 290]
    theirs, positions = hf_vl_logits(src, text, None, None)
    _assert_logits_match(longshot_vl_logits(tmp_path / "init", text, None, None, positions), theirs)


def test_qwen3_vl_moe_export_reimports_bit_identical_and_loads_in_transformers(tmp_path):
    from jobs.steps.export_hf import export_hf
    from tests.jobs.hf_models import hf_vl_logits, save_qwen3_vl_moe, video_sample

    src = save_qwen3_vl_moe(tmp_path / "hf")
    import_hf(src, tmp_path / "init")
    export_hf(tmp_path / "init", tmp_path / "export")
    import_hf(tmp_path / "export", tmp_path / "again", seed=99)
    first, second = _checkpoint_tensors(tmp_path / "init"), _checkpoint_tensors(tmp_path / "again")
    for k in (k for k in first if not k.endswith("_extra_state")):
        assert torch.equal(first[k], second[k]), k
    ids, patches, grid = video_sample()
    _assert_logits_match(hf_vl_logits(tmp_path / "export", ids, patches, grid)[0],
                         hf_vl_logits(src, ids, patches, grid)[0])
