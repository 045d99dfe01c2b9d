import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from shard_samples import random_sample, write_dataset

from shards.errors import DuplicateKey, SampleNotFound
from shards.format import TEXT
from shards.index import INDEX_SCHEMA
from shards.reader import DatasetReader, ShardReader


def test_dataset_reader_reads_every_sample(dataset):
    ds, specs, summaries = dataset
    reader = DatasetReader(ds)
    flat = [spec for shard in specs for spec in shard]
    assert reader.keys == [s.key for s in flat] and len(reader) == len(flat)
    index = reader.index
    assert index.column_names == [*INDEX_SCHEMA.names, "shard"]
    assert index["shard"].to_pylist() == [summaries[i].name for i, shard in enumerate(specs) for _ in shard]
    assert index["key"].to_pylist() == reader.keys
    for spec in reversed(flat):
        shard_number = next(i for i, shard in enumerate(specs) if spec in shard)
        assert reader.shard_for(spec.key).name == summaries[shard_number].name
        sample = reader.read(spec.key)
        np.testing.assert_array_equal(sample.frames, spec.frames)
        np.testing.assert_array_equal(sample.text, spec.text)
        assert sample.meta["id"] == spec.meta["id"]
        np.testing.assert_array_equal(reader.read_text(spec.key), spec.text)
    with pytest.raises(SampleNotFound, match=f"{ds}: no sample with key 'nope'"):
        reader.read("nope")


def test_without_a_manifest_the_shards_folder_is_listed(dataset):
    ds, specs, _ = dataset
    (ds / "dataset.parquet").unlink()
    assert DatasetReader(ds).keys == [s.key for shard in specs for s in shard]


def test_duplicate_keys_across_shards_are_refused(tmp_path, rng):
    a = random_sample(rng, "same")
    b = random_sample(rng, "same")
    write_dataset(tmp_path / "ds", [[a], [random_sample(rng, "other"), b]])
    with pytest.raises(DuplicateKey, match="'same' is in both shard-000000 and shard-000001"):
        DatasetReader(tmp_path / "ds")


def test_empty_dataset(tmp_path):
    write_dataset(tmp_path / "ds", [])
    reader = DatasetReader(tmp_path / "ds")
    assert reader.keys == [] and reader.index.num_rows == 0 and "shard" in reader.index.column_names


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        DatasetReader(tmp_path / "nothing")


def test_reader_survives_pickling_and_threads(dataset):
    """DataLoader workers get a pickled reader; threads share one (pread, no seek position)."""
    _, specs, summaries = dataset
    reader = ShardReader(summaries[0].tar_path)
    reader.read_meta(specs[0][0].key)  # opens the file descriptor
    clone = pickle.loads(pickle.dumps(reader))
    keys = [s.key for s in specs[0]] * 20
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda key: clone.read_member(key, TEXT), keys))
        frames = list(pool.map(reader.read_frames, keys))
    by_key = {s.key: s for s in specs[0]}
    for key, text, frame in zip(keys, texts, frames, strict=True):
        assert text == reader.read_member(key, TEXT)
        np.testing.assert_array_equal(frame, by_key[key].frames)
