"""PackDataset against the batch contract, on real shards written by ShardWriter."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shard_samples import write_dataset
from test_loader_data import (
    VISION_ID,
    Spec,
    decode_patch,
    expected_document,
    random_spec,
    to_sample,
    write_specs,
)

from shards.errors import CorruptShard
from shards.loader import PackDataset
from shards.packing import PackPlan, pack_samples


def build(tmp: Path, specs: list[list[Spec]], max_tokens: int, seed: int = 0, tokens_per_second: float = 2.0):
    reader = write_specs(tmp / "ds", specs)
    plan = pack_samples(
        {s.key: s.tokens for shard in specs for s in shard},
        max_tokens=max_tokens,
        seed=seed,
        shards={s.key: f"shard-{i:06d}" for i, shard in enumerate(specs) for s in shard},
    )
    return PackDataset(plan, reader, vision_token_id=VISION_ID, tokens_per_second=tokens_per_second)


def check_batch(batch, by_key: dict[str, Spec], plan: PackPlan, tokens_per_second: float) -> None:
    """Every field of one batch against the loop-built expectation and the frame coding."""
    assert batch.doc_keys == plan.pack_keys(batch.pack_index)
    specs = [by_key[k] for k in batch.doc_keys]
    ids = batch.input_ids.numpy()
    s = ids.size
    assert batch.input_ids.dtype == torch.int64 and batch.labels.dtype == torch.int64
    assert batch.position_ids.dtype == torch.int64 and batch.position_ids.shape == (3, s)
    assert batch.cu_seqlens.dtype == torch.int32 and batch.video_grid_thw.dtype == torch.int32
    assert batch.pixel_patches.dtype == torch.uint8 and batch.video_doc.dtype == torch.int32
    cu = batch.cu_seqlens.numpy()
    assert cu.tolist() == [0, *np.cumsum([sp.tokens for sp in specs]).tolist()]
    assert s == int(plan.pack_tokens[batch.pack_index]) <= plan.max_tokens

    videos = [(d, sp) for d, sp in enumerate(specs) if sp.vision_tokens]
    assert batch.video_doc.tolist() == [d for d, _ in videos]
    assert batch.video_grid_thw.tolist() == [[sp.frames // 2, sp.rows * 2, sp.cols * 2] for _, sp in videos]
    assert batch.pixel_patches.shape == (4 * sum(sp.vision_tokens for sp in specs), 2 * 14 * 14 * 3)

    patches = batch.pixel_patches.numpy()
    next_patch = 0
    for d, spec in enumerate(specs):
        doc = slice(cu[d], cu[d + 1])
        want_ids, want_labels, want_pos = expected_document(spec, tokens_per_second)
        np.testing.assert_array_equal(ids[doc], want_ids)
        np.testing.assert_array_equal(batch.labels.numpy()[doc], want_labels)
        np.testing.assert_array_equal(batch.position_ids.numpy()[:, doc], want_pos)
        # Patch order: the 4 patches of the k-th vision token come from its (group, row, col).
        pos = batch.position_ids.numpy()[:, doc]
        vision = np.flatnonzero(ids[doc] == VISION_ID)
        if vision.size:
            base = vision[0]
            for k, p in enumerate(vision):
                g, i, j = k // (spec.rows * spec.cols), k // spec.cols % spec.rows, k % spec.cols
                assert (pos[1, p] - base, pos[2, p] - base) == (i, j)
                assert pos[0, p] == base + int(np.floor(spec.timestamps[2 * g] * tokens_per_second + 0.5))
                for sub in range(4):
                    di, dj = divmod(sub, 2)
                    pix = decode_patch(patches[next_patch])
                    frame = (pix[..., 0].astype(int) - spec.marker) % 256
                    assert (frame == (2 * g + np.arange(2))[:, None, None]).all()
                    assert (pix[..., 1] == ((2 * i + di) * 14 + np.arange(14))[None, :, None]).all()
                    assert (pix[..., 2] == ((2 * j + dj) * 14 + np.arange(14))[None, None, :]).all()
                    next_patch += 1
    assert next_patch == patches.shape[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    shard_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    slack=st.floats(1.0, 3.0),
    tokens_per_second=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
)
def test_every_pack_matches_the_contract(seed, shard_sizes, slack, tokens_per_second):
    rng = np.random.default_rng(seed)
    specs = [
        [random_spec(rng, f"s{n}_{i}", marker=7 * (10 * n + i)) for i in range(size)]
        for n, size in enumerate(shard_sizes)
    ]
    by_key = {s.key: s for shard in specs for s in shard}
    longest = max(s.tokens for s in by_key.values())
    with tempfile.TemporaryDirectory() as tmp:
        data = build(
            Path(tmp),
            specs,
            max_tokens=max(1, int(longest * slack)),
            seed=seed,
            tokens_per_second=tokens_per_second,
        )
        seen = []
        for pack in range(len(data)):
            batch = data[pack]
            assert batch.pack_index == pack
            check_batch(batch, by_key, data.plan, tokens_per_second)
            seen += batch.doc_keys
    assert sorted(seen) == sorted(by_key)


def test_positions_restart_and_labels_stay_in_their_document(tmp_path, rng):
    # Two documents that are all loss: the last token of the first must not predict the second.
    a = Spec("a", rng.integers(0, 1000, 5).astype(np.int32), vision_at=5, loss_spans=[(0, 5)])
    b = Spec(
        "b",
        rng.integers(0, 1000, 4).astype(np.int32),
        vision_at=0,
        loss_spans=[(0, 4)],
        frames=2,
        rows=1,
        cols=1,
        timestamps=[10.0, 10.5],
    )
    data = build(tmp_path, [[a, b]], max_tokens=100)
    batch = data[0]
    cu = batch.cu_seqlens.tolist()
    labels, pos = batch.labels.tolist(), batch.position_ids
    for d in range(2):
        assert pos[:, cu[d]].min() == 0 or batch.input_ids[cu[d]] == VISION_ID
        assert labels[cu[d + 1] - 1] == -100
    doc_b = batch.doc_keys.index("b")
    # b starts with its video at t = 0 + round(10.0 * 2) = 20, h = w = 0; its text resumes at 21.
    assert pos[:, cu[doc_b]].tolist() == [20, 0, 0]
    assert pos[:, cu[doc_b] + 1].tolist() == [21, 21, 21]


def test_meta_that_contradicts_the_plan_or_itself_names_shard_and_key(tmp_path, rng):
    good = Spec(
        "good",
        rng.integers(0, 1000, 6).astype(np.int32),
        vision_at=2,
        loss_spans=[(0, 6)],
        frames=2,
        rows=1,
        cols=1,
        timestamps=[0.0, 1.0],
    )
    backwards = Spec(
        "backwards",
        rng.integers(0, 1000, 3).astype(np.int32),
        vision_at=0,
        loss_spans=[],
        frames=4,
        rows=1,
        cols=1,
        timestamps=[0.0, 1.0, 2.0, 0.5],
    )  # group 1 starts before group 0
    data = build(tmp_path, [[good, backwards]], max_tokens=8)
    for pack in range(len(data)):
        if "backwards" in data.plan.pack_keys(pack):
            with pytest.raises(CorruptShard, match=r"shard-000000\.tar: sample 'backwards'.*non-decreasing"):
                data[pack]
    stale = pack_samples(
        {"good": good.tokens + 1, "backwards": backwards.tokens},
        max_tokens=100,
        shards={"good": "shard-000000", "backwards": "shard-000000"},
    )
    data = PackDataset(stale, data.reader, vision_token_id=VISION_ID)
    with pytest.raises(CorruptShard, match=r"shard-000000\.tar: sample 'good'.*plan is stale"):
        data[0]


def test_missing_loss_spans_is_an_error_not_a_silent_default(tmp_path, rng):
    spec = Spec("nospans", rng.integers(0, 1000, 4).astype(np.int32), vision_at=0, loss_spans=[])
    sample = to_sample(spec)
    del sample.meta["loss_spans"]
    write_dataset(tmp_path / "ds", [[sample]])
    data = PackDataset(pack_samples({"nospans": 4}), tmp_path / "ds", vision_token_id=VISION_ID)
    with pytest.raises(CorruptShard, match=r"sample 'nospans': metadata lacks the field 'loss_spans'"):
        data[0]


def test_plan_read_back_from_parquet_loads_the_same_batches(tmp_path, rng):
    specs = [[random_spec(rng, f"k{i}", marker=i) for i in range(6)]]
    data = build(tmp_path, specs, max_tokens=max(s.tokens for s in specs[0]) * 2)
    path = data.plan.write(tmp_path)
    again = PackDataset(path, tmp_path / "ds", vision_token_id=VISION_ID)
    assert len(again) == len(data)
    for pack in range(len(data)):
        a, b = data[pack], again[pack]
        assert a.doc_keys == b.doc_keys
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_patches, b.pixel_patches)
