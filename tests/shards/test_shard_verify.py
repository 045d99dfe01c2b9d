import zlib

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shards.checksums import sha256_file
from shards.errors import ChecksumError, ShardError
from shards.format import FRAMES, JSON, MEMBERS, TEXT, index_path_for, member_name
from shards.index import read_index, write_index
from shards.manifest import read_manifest, summarize_shard, write_manifest
from shards.reader import ShardReader
from shards.verify import format_report, main, verify_dataset


def flip_byte(path, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ (1 << np.random.default_rng().integers(8))]))


def reasons(report) -> str:
    return "\n".join(str(p) for p in report.problems)


def test_a_clean_dataset_verifies(dataset):
    ds, specs, _ = dataset
    for decode in (False, True):
        report = verify_dataset(ds, decode=decode)
        assert report.ok, reasons(report)
        assert (report.shards, report.samples) == (2, sum(len(s) for s in specs))
        assert format_report(report).endswith("OK")


@pytest.mark.parametrize("member", MEMBERS)
def test_a_flipped_byte_in_any_member_is_caught(dataset, rng, member):
    ds, specs, summaries = dataset
    shard = int(rng.integers(2))
    spec = specs[shard][int(rng.integers(len(specs[shard])))]
    tar_path = summaries[shard].tar_path
    loc = ShardReader(tar_path).location(spec.key, member)
    flip_byte(tar_path, loc.offset + int(rng.integers(loc.size)))

    report = verify_dataset(ds)
    assert not report.ok
    bad_member = [p for p in report.problems if p.key == spec.key and "crc32" in p.reason]
    assert len(bad_member) == 1 and member_name(spec.key, member) in bad_member[0].reason
    assert bad_member[0].shard == summaries[shard].name
    assert any("sha256" in p.reason and p.shard == summaries[shard].name for p in report.problems)
    text = format_report(report)
    assert "problem(s)" in text and spec.key in text

    read = {FRAMES: ShardReader.read_frames, JSON: ShardReader.read_meta, TEXT: ShardReader.read_text}[member]
    with pytest.raises(ChecksumError) as err:
        read(ShardReader(tar_path), spec.key)
    message = str(err.value)
    assert str(tar_path) in message and repr(spec.key) in message and member_name(spec.key, member) in message


def test_chunked_frame_reads_raise_before_yielding_the_last_chunk(dataset, rng):
    _, specs, summaries = dataset
    spec = max(specs[0], key=lambda s: len(s.frames))
    tar_path = summaries[0].tar_path
    loc = ShardReader(tar_path).location(spec.key, FRAMES)
    flip_byte(tar_path, loc.offset + loc.size - 1)  # last byte: zstd's own checksum of the frame
    chunks = []
    with pytest.raises(ChecksumError, match=repr(spec.key)):
        chunks.extend(ShardReader(tar_path).iter_frame_chunks(spec.key, chunk_frames=1))
    assert len(chunks) < len(spec.frames)


@pytest.mark.parametrize("cut", ["inside_member", "end_marker"])
def test_a_truncated_shard_is_caught(dataset, rng, cut):
    ds, specs, summaries = dataset
    tar_path = summaries[1].tar_path
    last = specs[1][-1]
    if cut == "inside_member":
        loc = ShardReader(tar_path).location(last.key, FRAMES)
        size = loc.offset + int(rng.integers(loc.size))
    else:
        loc = ShardReader(tar_path).location(last.key, TEXT)  # the last member of the tar
        size = loc.offset + loc.size + (-loc.size % 512) + int(rng.integers(0, 1024))  # into the end marker
    with open(tar_path, "r+b") as f:
        f.truncate(size)
    report = verify_dataset(ds)
    assert not report.ok
    text = reasons(report)
    assert f"tar has {size} bytes" in text
    if cut == "inside_member":
        assert any(p.key == last.key for p in report.problems), text
        with pytest.raises(ShardError, match="truncated"):
            ShardReader(tar_path).read_text(last.key)
    else:
        assert "end-of-archive" in text
    # without the manifest's digests the structural checks still see it
    (ds / "dataset.parquet").unlink()
    report = verify_dataset(ds)
    structural = [p for p in report.problems if p.shard == summaries[1].name]
    assert structural and all("sha256" not in p.reason for p in structural), reasons(report)


def test_a_changed_index_is_caught(dataset, rng):
    ds, specs, summaries = dataset
    index_path = summaries[0].index_path
    table = read_index(index_path)
    row = int(rng.integers(table.num_rows))
    offsets = table["json_offset"].to_pylist()
    offsets[row] += 512
    write_index(
        index_path, table.set_column(table.schema.get_field_index("json_offset"), "json_offset", [offsets])
    )

    report = verify_dataset(ds)
    key = specs[0][row].key
    text = reasons(report)
    assert "sha256" in text and summaries[0].name in text
    assert any(p.key == key and "offset" in p.reason for p in report.problems), text
    assert any(p.key == key and "crc32" in p.reason for p in report.problems), text

    # even with a manifest rewritten to match, the layout check still fails
    write_manifest(ds, [summarize_shard(s.tar_path) for s in summaries])
    report = verify_dataset(ds)
    assert not report.ok and all(p.key == key for p in report.problems), reasons(report)


def test_index_and_manifest_counts_must_agree(dataset):
    ds, _, summaries = dataset
    index_path = summaries[0].index_path
    table = read_index(index_path)
    write_index(index_path, table.slice(0, table.num_rows - 1))
    report = verify_dataset(ds)
    text = reasons(report)
    assert f"index has {table.num_rows - 1} rows, dataset.parquet says {table.num_rows}" in text
    assert "is not in the index" in text


def test_decode_mode_catches_damage_hidden_from_checksums(dataset):
    """A corrupted frames member whose index crc and manifest digests were rewritten to match."""
    ds, specs, summaries = dataset
    spec = specs[0][0]
    tar_path = summaries[0].tar_path
    loc = ShardReader(tar_path).location(spec.key, FRAMES)
    flip_byte(tar_path, loc.offset + loc.size // 2)
    table = read_index(index_path_for(tar_path))
    shard = ShardReader(tar_path)
    with pytest.raises(ChecksumError):
        shard.read_frames(spec.key)
    with open(tar_path, "rb") as f:
        f.seek(loc.offset)
        new_crc = zlib.crc32(f.read(loc.size))
    crcs = table["frames_crc32"].to_pylist()
    crcs[0] = new_crc
    write_index(
        index_path_for(tar_path),
        table.set_column(table.schema.get_field_index("frames_crc32"), "frames_crc32", [crcs]),
    )
    write_manifest(ds, [summarize_shard(s.tar_path) for s in summaries])
    assert verify_dataset(ds).ok
    report = verify_dataset(ds, decode=True)
    assert [p.key for p in report.problems] == [spec.key], reasons(report)
    assert "zstd" in report.problems[0].reason


def test_missing_manifest_and_stray_shards_are_reported(dataset, rng):
    ds, _, summaries = dataset
    write_manifest(ds, summaries[:1])
    report = verify_dataset(ds)
    assert [str(p) for p in report.problems] == [
        f"{summaries[1].name}: shard is in shards/ but not in dataset.parquet"
    ]
    (ds / "dataset.parquet").unlink()
    report = verify_dataset(ds)
    assert (
        report.shards == 2
        and len(report.problems) == 1
        and "dataset manifest not found" in report.problems[0].reason
    )
    summaries[0].index_path.unlink()
    assert any("is missing" in p.reason for p in verify_dataset(ds).problems)


def test_manifest_round_trip_is_sorted_and_deterministic(dataset, tmp_path):
    ds, _, summaries = dataset
    first = (ds / "dataset.parquet").read_bytes()
    write_manifest(ds, list(reversed(summaries)))
    assert (ds / "dataset.parquet").read_bytes() == first
    assert read_manifest(ds) == summaries
    assert [summarize_shard(s.tar_path) for s in summaries] == summaries
    table = pq.read_table(ds / "dataset.parquet")
    assert table.column_names == ["name", "samples", "tokens", "bytes", "tar_sha256", "index_sha256"]
    assert table["tar_sha256"].to_pylist() == [sha256_file(s.tar_path) for s in summaries]
    assert pc.sum(table["samples"]).as_py() == 5


def test_cli_exit_status(dataset, capsys):
    ds, _, summaries = dataset
    assert main([str(ds)]) == 0
    flip_byte(summaries[0].tar_path, summaries[0].bytes // 3)
    assert main([str(ds), "--decode"]) == 1
    assert "problem(s)" in capsys.readouterr().out
