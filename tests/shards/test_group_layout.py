"""The loader on samples stored in a per-group video layout (Qwen3-VL's): each temporal group's
placeholders at its own text index, and stored places that contradict the video refused by name.
(That the ids and positions are transformers' own is tests/jobs/test_qwen3_vl_video_layout.py.)"""

import numpy as np
import pytest
from shard_samples import write_dataset
from test_loader_data import VISION_ID, Spec, to_sample

from shards.errors import CorruptShard
from shards.loader import PackDataset
from shards.packing import pack_samples


def _dataset(tmp_path, rng, places):
    spec = Spec("clip", rng.integers(0, 1000, 9).astype(np.int32), vision_at=0, loss_spans=[(7, 9)],
                frames=6, rows=2, cols=3, timestamps=[0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    sample = to_sample(spec)
    sample.meta["vision_at"] = places
    write_dataset(tmp_path / "ds", [[sample]])
    return spec, PackDataset(pack_samples({"clip": spec.tokens}), tmp_path / "ds", vision_token_id=VISION_ID)


def test_each_group_goes_to_its_own_place(tmp_path, rng):
    spec, data = _dataset(tmp_path, rng, [1, 3, 5])
    ids = data[0].input_ids.numpy()
    text, six = spec.text.astype(np.int64), np.full(6, VISION_ID)
    want = np.concatenate([text[:1], six, text[1:3], six, text[3:5], six, text[5:]])
    np.testing.assert_array_equal(ids, want)
    # each group a 2 x 3 picture at the running index; text resumes max(2, 3) later
    pos = data[0].position_ids.numpy()
    assert pos[:, :1].tolist() == [[0], [0], [0]]
    assert pos[:, 1:7].tolist() == [[1] * 6, [1, 1, 1, 2, 2, 2], [1, 2, 3, 1, 2, 3]]
    assert pos[:, 7].tolist() == [4, 4, 4]


@pytest.mark.parametrize("places, reason", [([1, 3], "2 group places but the video has 3"),
                                            ([3, 1, 5], "not non-decreasing"),
                                            ([1, 3, 10], "not non-decreasing within the 9")])
def test_places_that_contradict_the_video_name_the_sample(tmp_path, rng, places, reason):
    _, data = _dataset(tmp_path, rng, places)
    with pytest.raises(CorruptShard, match=rf"shard-000000\.tar: sample 'clip'.*{reason}"):
        data[0]
