import math
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from shard_samples import random_sample, write_dataset

from shards.stats import DEFAULT_BUILDERS, Section, compute_stats, format_table, main, write_stats

ERRORS = [
    ("v1", "/videos/v1.mp4", "probe", "cannot open file"),
    (None, "/videos/v2.mp4", "probe", "cannot open file"),
    ("v3", "/videos/v3.mp4", "encode", "decode error at frame 12"),
    ("v4", "/videos/v4.mp4", "probe", "no video stream"),
    ("v5", "/videos/v5.mp4", "probe", "cannot open file"),
]


@pytest.fixture
def stats_dataset(tmp_path, rng):
    specs = [[random_sample(rng, f"s{shard}_{i}") for i in range(n)] for shard, n in enumerate((4, 3))]
    del specs[1][0].meta["duration_s"]  # a sample without a duration
    ds = tmp_path / "ds"
    write_dataset(ds, specs)
    errors = pa.table(
        {name: [row[i] for row in ERRORS] for i, name in enumerate(("id", "input", "stage", "reason"))},
        schema=pa.schema(
            [("id", pa.string()), ("input", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
        ),
    )
    pq.write_table(errors, ds / "errors.parquet")
    return ds, [spec for shard in specs for spec in shard]


def frames_member_sizes(ds) -> dict[str, int]:
    """Stored frame bytes per key, read from the tars with tarfile (not from our index)."""
    sizes = {}
    for tar_path in sorted((ds / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            sizes.update({m.name.split(".")[0]: m.size for m in tar if m.name.endswith(".frames.zst")})
    return sizes


def test_stats_numbers_match_what_was_written(stats_dataset):
    ds, specs = stats_dataset
    stats = compute_stats(ds)
    value = stats.value

    durations = {s.key: s.meta["duration_s"] for s in specs if "duration_s" in s.meta}
    hours = sum(durations.values()) / 3600
    vision = sum(s.meta["vision_tokens"] for s in specs)
    text = sum(len(s.text) for s in specs)
    assert value("overview", "shards") == 2
    assert value("overview", "samples") == len(specs)
    assert value("overview", "video hours") == pytest.approx(hours)
    assert value("overview", "samples without duration_s") == 1
    assert (value("tokens", "vision"), value("tokens", "text"), value("tokens", "total")) == (
        vision,
        text,
        vision + text,
    )
    per_sample = sorted(s.meta["vision_tokens"] + len(s.text) for s in specs)
    assert value("tokens", "per sample max") == per_sample[-1]
    assert value("tokens", "per sample min") == per_sample[0]
    assert value("duration_s", "per sample max") == pytest.approx(max(durations.values()))

    fps = Counter(f"{s.meta['sample_fps']:g}" for s in specs)
    assert dict(stats.section("sample_fps").rows) == fps
    sizes = Counter(f"{s.frames.shape[1]}x{s.frames.shape[2]}" for s in specs)
    assert dict(stats.section("size HxW").rows) == sizes

    member_sizes = frames_member_sizes(ds)
    assert value("storage", "frames bytes") == sum(member_sizes.values())
    timed_bytes = sum(member_sizes[key] for key in durations)
    assert value("storage", "frames bytes per video hour") == pytest.approx(timed_bytes / hours)

    errors = dict(stats.section("errors").rows)
    assert errors == {
        "total": 5,
        "probe: cannot open file": 3,
        "encode: decode error at frame 12": 1,
        "probe: no video stream": 1,
    }
    assert [name for name, _ in stats.section("errors").rows][:2] == ["total", "probe: cannot open file"]


def test_table_parquet_and_plots(stats_dataset, capsys):
    ds, specs = stats_dataset
    stats = compute_stats(ds)
    table = format_table(stats)
    lines = table.splitlines()
    assert lines[0].split() == ["section", "metric", "value"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert lines[2].split() == ["overview", "shards", "2"]
    assert lines[3].split() == ["samples", str(len(specs))]  # section name only on its first row

    paths = write_stats(ds, stats)
    assert [p.relative_to(ds).as_posix() for p in paths] == [
        "stats.parquet",
        "stats/tokens_per_sample.png",
        "stats/durations.png",
    ]
    rows = pq.read_table(ds / "stats.parquet").to_pylist()
    assert {"section": "overview", "metric": "samples", "value": float(len(specs))} in rows
    assert len(rows) == sum(len(s.rows) for s in stats.sections)
    for png in paths[1:]:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 100

    assert main([str(ds), "--no-write"]) == 0
    assert "frames bytes per video hour" in capsys.readouterr().out


def test_more_sections_can_be_added(stats_dataset):
    ds, _ = stats_dataset

    def packing(data):
        return Section("packing", [("sequences", 3), ("fill", 0.75)])

    stats = compute_stats(ds, builders=[*DEFAULT_BUILDERS, packing, lambda data: None])
    assert stats.sections[-1].name == "packing" and stats.value("packing", "fill") == 0.75
    assert "packing" in format_table(stats)


def test_dataset_without_errors_or_samples(tmp_path):
    ds = tmp_path / "empty"
    write_dataset(ds, [[]])
    stats = compute_stats(ds)
    assert stats.value("overview", "samples") == 0
    assert math.isnan(stats.value("storage", "frames bytes per video hour"))
    assert "errors" not in [s.name for s in stats.sections]
    assert "n/a" in format_table(stats)
    write_stats(ds, stats)
    assert (ds / "stats" / "durations.png").stat().st_size > 0


def test_malformed_errors_table_is_named(stats_dataset):
    ds, _ = stats_dataset
    pq.write_table(pa.table({"id": ["x"], "why": ["y"]}), ds / "errors.parquet")
    with pytest.raises(
        Exception, match=r"errors.parquet: error table lacks column\(s\) \['input', 'stage', 'reason'\]"
    ):
        compute_stats(ds)
