import secrets

import numpy as np
import pytest
from shard_samples import random_sample, write_dataset


@pytest.fixture
def rng(request):
    """Fresh random data every run; the seed is printed so a failure can be replayed."""
    seed = secrets.randbits(64)
    print(f"{request.node.nodeid}: rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def dataset(tmp_path, rng):
    """A dataset folder of 2 shards (3 and 2 samples) and the specs written into it."""
    specs = [[random_sample(rng, f"s{shard}_{i}") for i in range(n)] for shard, n in enumerate((3, 2))]
    summaries = write_dataset(tmp_path / "ds", specs)
    return tmp_path / "ds", specs, summaries
