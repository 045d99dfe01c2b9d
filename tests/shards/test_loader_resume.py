"""Data-parallel split, exact resume through DataLoader workers, and damaged shards through workers."""

import numpy as np
import pytest
import torch
from test_loader_data import VISION_ID, random_spec, write_specs

from shards.errors import ChecksumError
from shards.format import FRAMES, JSON, TEXT
from shards.load_sampler import PackSampler, StatefulLoader
from shards.loader import PackDataset
from shards.packing import pack_samples

WORKERS = {"num_workers": 2, "prefetch_factor": 2}


@pytest.fixture
def packs(tmp_path, rng):
    """A dataset of 2 shards packed into 8 to 16 packs (random sizes drawn until they give that)."""
    for _ in range(50):
        specs = [[random_spec(rng, f"s{n}_{i}", marker=i + 20 * n, max_side=2) for i in range(12)]
                 for n in range(2)]
        flat = [s for shard in specs for s in shard]
        limit = max(s.tokens for s in flat) + 20
        if 8 <= pack_samples({s.key: s.tokens for s in flat}, max_tokens=limit).num_packs <= 16:
            break
    else:
        pytest.fail("50 random draws never gave 8 to 16 packs: the sample generator changed")
    reader = write_specs(tmp_path / "ds", specs)
    shard_of = dict(zip(reader.index["key"].to_pylist(), reader.index["shard"].to_pylist()))
    plan = pack_samples({s.key: s.tokens for s in flat}, max_tokens=limit,
                        seed=int(rng.integers(1 << 30)), shards=shard_of)
    return PackDataset(plan, reader, vision_token_id=VISION_ID)


def batches_equal(a, b) -> bool:
    return (a.pack_index == b.pack_index and a.doc_keys == b.doc_keys
            and all(torch.equal(getattr(a, f), getattr(b, f)) for f in
                    ("input_ids", "labels", "position_ids", "cu_seqlens", "pixel_patches", "video_grid_thw", "video_doc")))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_deterministic_shares(world_size):
    num_packs = 2 * 3 * 5 + 1  # one left over for 2 and 3 ranks
    per_epoch = []
    for epoch in range(6):
        shares = [PackSampler(num_packs, rank=r, world_size=world_size, seed=9).epoch_order(epoch)
                  for r in range(world_size)]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) == num_packs // world_size
        union = np.concatenate(shares)
        assert np.unique(union).size == union.size  # disjoint
        again = [PackSampler(num_packs, rank=r, world_size=world_size, seed=9).epoch_order(epoch)
                 for r in range(world_size)]
        assert all(np.array_equal(a, b) for a, b in zip(shares, again))  # deterministic
        per_epoch.append(union)
    assert len({tuple(u) for u in per_epoch}) == len(per_epoch)  # reshuffled every epoch
    assert set(np.concatenate(per_epoch).tolist()) == set(range(num_packs))  # the left-over one rotates


def test_two_ranks_cover_every_pack_once_per_epoch():
    samplers = [PackSampler(40, rank=r, world_size=2, seed=1) for r in range(2)]
    for _ in range(3):
        seen = [list(s) for s in samplers]  # iterating moves each sampler to the next epoch
        assert sorted(seen[0] + seen[1]) == list(range(40)) and len(seen[0]) == len(seen[1]) == 20
    assert samplers[0].epoch == 3


def test_resume_through_workers_yields_what_an_uninterrupted_run_would(packs):
    sampler = PackSampler(len(packs), seed=5)
    total = len(sampler) * 2 + 3  # runs into a third epoch
    expected = []
    loader = StatefulLoader(packs, sampler, **WORKERS)
    while len(expected) < total:
        for batch in loader:
            expected.append(batch)
            if len(expected) == total:
                break
    assert [b.pack_index for b in expected[: len(sampler)]] != [b.pack_index for b in expected[len(sampler):2 * len(sampler)]]

    for stop in (3, len(sampler), len(sampler) + 1):  # mid-epoch, at the epoch boundary, after it
        got = []
        first = StatefulLoader(packs, PackSampler(len(packs), seed=5), **WORKERS)
        while len(got) < stop:
            for batch in first:
                got.append(batch)
                if len(got) == stop:
                    break  # workers have prefetched beyond this point
        state = first.state_dict()
        del first
        resumed = StatefulLoader(PackDataset(packs.plan, packs.reader.dataset_dir, vision_token_id=VISION_ID),
                                 PackSampler(len(packs), seed=5), **WORKERS)
        resumed.load_state_dict(state)
        while len(got) < total:
            for batch in resumed:
                got.append(batch)
                if len(got) == total:
                    break
        assert all(batches_equal(a, b) for a, b in zip(got, expected)), f"resume after {stop} items differs"


def test_leaving_the_loop_and_coming_back_continues_where_the_trainer_stopped(packs):
    loader = StatefulLoader(packs, PackSampler(len(packs), seed=4), **WORKERS)
    got = []
    for stop in (2, 3, 6):
        for batch in loader:  # workers prefetch past each break; the next loop must not skip those
            got.append(batch.pack_index)
            if len(got) == stop:
                break
    got += [batch.pack_index for batch in loader]
    assert got == PackSampler(len(packs), seed=4).epoch_order(0).tolist()


def test_state_after_a_full_epoch_points_at_the_next(packs):
    loader = StatefulLoader(packs, PackSampler(len(packs), seed=2))
    first_epoch = [b.pack_index for b in loader]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    second = [b.pack_index for b in loader]
    assert sorted(first_epoch) == sorted(second) and first_epoch != second
    with pytest.raises(ValueError, match="world_size"):
        PackSampler(len(packs), rank=0, world_size=2).load_state_dict(loader.state_dict())


@pytest.mark.parametrize("member", [FRAMES, JSON, TEXT])
def test_flipped_byte_raises_naming_shard_and_key_through_a_worker(packs, member):
    key = next(k for k in packs.plan.key if packs.reader.read_meta(k)["vision_tokens"] > 0)
    shard = packs.reader.shard_for(key)
    location = shard.location(key, member)
    with open(shard.tar_path, "r+b") as f:
        f.seek(location.offset + location.size // 2)
        byte = f.read(1)
        f.seek(location.offset + location.size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    loader = StatefulLoader(packs, PackSampler(len(packs), seed=0), **WORKERS)
    with pytest.raises(ChecksumError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert str(shard.tar_path) in message and repr(key) in message
