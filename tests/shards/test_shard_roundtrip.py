import json

import numpy as np
import pytest
from shard_samples import SampleSpec, random_frames, random_sample, write_shard

from shards.errors import DuplicateKey, InvalidKey, InvalidSample, SampleNotFound, ShardError
from shards.format import FRAMES, JSON, TEXT, index_path_for
from shards.index import INDEX_SCHEMA
from shards.reader import ShardReader
from shards.writer import ShardWriter


def odd_samples(rng) -> list[SampleSpec]:
    """Odd frame sizes, a single frame, one window per frame, many uneven windows."""
    specs = [
        random_sample(rng, "one_frame", t=1, h=1, w=1),
        random_sample(rng, "odd_size", t=5, h=7, w=13),
        random_sample(rng, "many_chunks", t=97, h=17, w=31),
        random_sample(rng, "tall", t=3, h=61, w=2),
    ]
    specs[1].chunk_sizes = [1] * 5
    specs[2].chunk_sizes = [
        int(n) for n in np.diff(np.r_[0, np.sort(rng.choice(np.arange(1, 97), 40, replace=False)), 97])
    ]
    specs[3].text = np.array([], dtype=np.int64)
    return specs


def expected_meta(spec: SampleSpec, level: int, delta: bool) -> dict:
    t, h, w, _ = spec.frames.shape
    frames = {"codec": "zstd", "delta": delta, "dtype": "uint8", "level": level, "raw_bytes": t * h * w * 3}
    return {**spec.meta, "frames": {**frames, "shape": [t, h, w, 3]}, "text_tokens": len(spec.text)}


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("level", [1, 19])
def test_round_trip(tmp_path, rng, delta, level):
    specs = odd_samples(rng)
    tar_path = tmp_path / "shard-000000.tar"
    summary = write_shard(tar_path, specs, zstd_level=level, frame_delta=delta)
    assert summary.samples == len(specs)
    assert summary.tokens == sum(s.meta["vision_tokens"] + len(s.text) for s in specs)

    with ShardReader(tar_path) as reader:
        assert reader.keys == [s.key for s in specs]
        for spec in specs:
            sample = reader.read(spec.key)
            assert sample.frames.dtype == np.uint8 and sample.frames.flags.c_contiguous
            np.testing.assert_array_equal(sample.frames, spec.frames)
            np.testing.assert_array_equal(reader.read_frames(spec.key), spec.frames)
            assert sample.text.dtype == np.int32
            np.testing.assert_array_equal(sample.text, spec.text)
            assert sample.meta == expected_meta(spec, level, delta)
            assert reader.read_meta(spec.key) == sample.meta
            chunks = list(reader.iter_frame_chunks(spec.key, chunk_frames=3))
            assert [len(c) for c in chunks] == [
                min(3, len(spec.frames) - i) for i in range(0, len(spec.frames), 3)
            ]
            np.testing.assert_array_equal(np.concatenate(chunks), spec.frames)


def test_index_rows_follow_tar_order_and_meta(tmp_path, rng):
    specs = [random_sample(rng, f"k{i}") for i in range(4)]
    del (
        specs[1].meta["duration_s"],
        specs[1].meta["id"],
        specs[1].meta["height"],
        specs[1].meta["vision_tokens"],
    )
    tar_path = tmp_path / "shard-000000.tar"
    write_shard(tar_path, specs)
    reader = ShardReader(tar_path)
    assert reader.index.schema.equals(INDEX_SCHEMA)
    rows = reader.index.to_pylist()
    offsets = [row[f"{m}_offset"] for row in rows for m in (FRAMES, JSON, TEXT)]
    assert offsets == sorted(offsets) and offsets[0] > 0
    for spec, row in zip(specs, rows, strict=True):
        vision = spec.meta.get("vision_tokens", 0)
        assert row["key"] == spec.key
        assert (row["vision_tokens"], row["text_tokens"], row["tokens"]) == (
            vision,
            len(spec.text),
            vision + len(spec.text),
        )
        for name in ("duration_s", "id"):
            assert row[name] == spec.meta.get(name)
        assert (row["n_frames"], row["height"], row["width"]) == spec.frames.shape[:3]
    assert rows[1]["duration_s"] is None and rows[1]["id"] is None


def test_metadata_is_canonical_sorted_json(tmp_path, rng):
    spec = random_sample(rng, "k")
    spec.meta.update(np_int=np.int64(7), np_float=np.float32(0.5), np_list=np.arange(3))
    tar_path = tmp_path / "shard-000000.tar"
    write_shard(tar_path, [spec])
    raw = ShardReader(tar_path).read_member("k", JSON)
    meta = json.loads(raw)
    assert raw == json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    assert (meta["np_int"], meta["np_float"], meta["np_list"]) == (7, 0.5, [0, 1, 2])


def test_writing_the_same_samples_twice_gives_identical_bytes(tmp_path, rng):
    specs = odd_samples(rng) + [random_sample(rng, "x" * 160)]
    for delta in (False, True):
        paths = [tmp_path / f"{run}-{delta}" / "shard-000007.tar" for run in ("a", "b")]
        summaries = []
        for path in paths:
            path.parent.mkdir()
            summaries.append(write_shard(path, specs, frame_delta=delta))
        assert paths[0].read_bytes() == paths[1].read_bytes()
        assert index_path_for(paths[0]).read_bytes() == index_path_for(paths[1]).read_bytes()
        assert summaries[0].tar_sha256 == summaries[1].tar_sha256
        assert summaries[0].index_sha256 == summaries[1].index_sha256
        assert summaries[0].name == "shard-000007"


def test_tar_size_is_whole_records(tmp_path, rng):
    tar_path = tmp_path / "shard-000000.tar"
    write_shard(tar_path, [random_sample(rng, "a")])
    assert tar_path.stat().st_size % 10240 == 0


def test_duplicate_key_is_refused_and_the_writer_goes_on(tmp_path, rng):
    a, b = random_sample(rng, "a"), random_sample(rng, "b")
    tar_path = tmp_path / "shard-000000.tar"
    with ShardWriter(tar_path, index_path_for(tar_path)) as writer:
        writer.add("a", a.meta, a.chunks(), a.text)
        with pytest.raises(DuplicateKey, match=f"{tar_path}.*'a'"):
            writer.add("a", b.meta, b.chunks(), b.text)
        writer.add("b", b.meta, b.chunks(), b.text)
    assert ShardReader(tar_path).keys == ["a", "b"]


def test_a_failing_sample_is_rolled_back(tmp_path, rng):
    """A decode error mid-video (the iterator raises) or a bad window leaves no trace in the shard."""
    good = [random_sample(rng, f"good{i}", t=6) for i in range(3)]
    frames = random_frames(rng, 20, 8, 8)

    def broken_decoder():
        yield frames[:8]
        yield frames[8:16]
        raise RuntimeError("decoder died at frame 16")

    tar_path = tmp_path / "shard-000000.tar"
    with ShardWriter(tar_path, index_path_for(tar_path), frame_delta=True) as writer:
        writer.add(good[0].key, good[0].meta, good[0].chunks(), good[0].text)
        size_before = writer.bytes_written
        with pytest.raises(RuntimeError, match="decoder died"):
            writer.add("bad1", {}, broken_decoder(), [])
        assert writer.bytes_written == size_before
        with pytest.raises(InvalidSample, match=r"'bad2'.*frame 8 has frame shape \(8, 7, 3\).*\(8, 8, 3\)"):
            writer.add("bad2", {}, [frames[:8], frames[8:16, :, :7]], [])
        with pytest.raises(InvalidSample, match=r"'bad3'.*dtype float32"):
            writer.add("bad3", {}, [frames[:8], frames[8:16].astype(np.float32)], [])
        with pytest.raises(InvalidSample, match=r"'bad4'.*no frames"):
            writer.add("bad4", {}, [frames[:0]], [])
        with pytest.raises(InvalidSample, match=r"'bad5'.*\(n, H, W, 3\)"):
            writer.add("bad5", {}, [frames[..., :2]], [])
        for spec in good[1:]:
            writer.add(spec.key, spec.meta, spec.chunks(), spec.text)
    with ShardReader(tar_path) as reader:
        assert reader.keys == [s.key for s in good]
        for spec in good:
            np.testing.assert_array_equal(reader.read_frames(spec.key), spec.frames)
    reference = tmp_path / "ref" / "shard-000000.tar"
    reference.parent.mkdir()
    write_shard(reference, good, frame_delta=True)
    assert tar_path.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize(
    ("meta", "text", "message"),
    [
        ({"frames": 1}, [1], "may not set 'frames'"),
        ({"text_tokens": 3}, [1, 2], "'text_tokens' is 3 but text_ids has 2"),
        ({"vision_tokens": 5, "tokens": 6}, [1, 2], "'tokens' is 6 but vision_tokens \\+ text_tokens = 7"),
        ({"vision_tokens": -1}, [], "'vision_tokens' must be an int >= 0"),
        ({"n_frames": 3}, [], "'n_frames' is 3 but the frames written have n_frames 2"),
        ({"height": 5}, [], "'height' is 5 but the frames written have height 4"),
        ({"duration_s": "long"}, [], "'duration_s' must be a number"),
        ({"id": 17}, [], "'id' must be a string"),
        ({"bad": object()}, [], "cannot be stored as JSON"),
        ({"bad": float("nan")}, [], "cannot be stored as JSON"),
        ({}, [[1, 2]], "text_ids must be 1-D"),
        ({}, [0.5], "text_ids must be integers"),
        ({}, [2**40], "text_ids must fit int32"),
    ],
)
def test_bad_samples_are_refused_with_the_key_and_reason(tmp_path, rng, meta, text, message):
    frames = random_frames(rng, 2, 4, 4)
    tar_path = tmp_path / "shard-000000.tar"
    with ShardWriter(tar_path, index_path_for(tar_path)) as writer:
        with pytest.raises(InvalidSample, match=message) as err:
            writer.add("the_key", meta, [frames], np.asarray(text))
        assert "'the_key'" in str(err.value) and str(tar_path) in str(err.value)
        assert writer.samples == 0 and writer.bytes_written == 0


def test_invalid_key_is_refused_before_anything_is_written(tmp_path, rng):
    tar_path = tmp_path / "shard-000000.tar"
    with ShardWriter(tar_path, index_path_for(tar_path)) as writer:
        for key in ("../x", "a/b", "a.b", "", "ünï"):
            with pytest.raises(InvalidKey, match="invalid sample key"):
                writer.add(key, {}, [random_frames(rng, 1, 2, 2)], [])
        assert writer.bytes_written == 0


def test_exception_in_with_block_removes_partial_files(tmp_path, rng):
    spec = random_sample(rng, "a")
    tar_path = tmp_path / "shard-000000.tar"
    with pytest.raises(KeyboardInterrupt), ShardWriter(tar_path, index_path_for(tar_path)) as writer:
        writer.add(spec.key, spec.meta, spec.chunks(), spec.text)
        raise KeyboardInterrupt
    assert not tar_path.exists() and not index_path_for(tar_path).exists()
    with pytest.raises(ShardError, match="cannot continue: aborted"):
        writer.add("b", {}, [], [])


def test_closed_writer_refuses_more_samples_and_close_is_idempotent(tmp_path, rng):
    tar_path = tmp_path / "shard-000000.tar"
    writer = ShardWriter(tar_path, index_path_for(tar_path))
    summary = writer.close()
    assert writer.close() is summary and summary.samples == 0
    with pytest.raises(ShardError, match="closed"):
        writer.add("a", {}, [random_frames(rng, 1, 2, 2)], [])
    assert ShardReader(tar_path).keys == []


def test_reader_errors_name_the_shard_and_key(tmp_path, rng):
    tar_path = tmp_path / "shard-000000.tar"
    write_shard(tar_path, [random_sample(rng, "a")])
    reader = ShardReader(tar_path)
    with pytest.raises(SampleNotFound, match=f"{tar_path}: no sample with key 'zzz'"):
        reader.read("zzz")
    with pytest.raises(KeyError):
        reader.read_meta("zzz")
    index_path_for(tar_path).unlink()
    with pytest.raises(FileNotFoundError, match="index of shard"):
        ShardReader(tar_path)
    with pytest.raises(FileNotFoundError, match="shard tar not found"):
        ShardReader(tmp_path / "shard-000001.tar")


def test_bad_writer_options(tmp_path):
    for level in (0, 23, 1.5, True):
        with pytest.raises(ValueError, match="zstd level"):
            ShardWriter(tmp_path / "s.tar", tmp_path / "s.parquet", zstd_level=level)


def test_non_contiguous_windows_are_stored_as_their_values(tmp_path, rng):
    """Windows may be views (flipped, strided, channel-reordered) of a decoder's buffer."""
    frames = random_frames(rng, 12, 9, 10)
    views = [frames[:4, ::-1], frames[4:8, :, ::2].repeat(2, axis=2)[:, :, :10], frames[8:, ..., ::-1]]
    expected = np.concatenate([np.ascontiguousarray(v) for v in views])
    tar_path = tmp_path / "shard-000000.tar"
    with ShardWriter(tar_path, index_path_for(tar_path), frame_delta=True) as writer:
        writer.add("views", {}, iter(views), [])
    np.testing.assert_array_equal(ShardReader(tar_path).read_frames("views"), expected)
