"""Statistics of a dataset folder: a list of named sections, a text table, Parquet and plots.

``compute_stats`` runs a list of section builders over one ``StatsInput`` (the concatenated
shard indexes, per-sample metadata read on demand, and ``errors.parquet`` when present).
Later stages add their own sections by passing more builders, e.g.
``compute_stats(dir, builders=[*DEFAULT_BUILDERS, packing_section])``; a builder returns a
``Section`` or None.

``stats.parquet`` is long format (section, metric, value) so new sections need no schema change.
"""

import argparse
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.errors import CorruptShard
from shards.format import ERRORS_FILE, STATS_DIR, STATS_FILE
from shards.frame_codecs import LOSSY_CODECS
from shards.jpeg_frames import psnr_from_mse
from shards.meta_codec import FRAMES_FIELD
from shards.reader import DatasetReader

ERRORS_COLUMNS = ("id", "input", "stage", "reason")
STATS_SCHEMA = pa.schema([("section", pa.string()), ("metric", pa.string()), ("value", pa.float64())])
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Section:
    name: str
    rows: list[tuple[str, float]]


@dataclass
class DatasetStats:
    sections: list[Section]
    series: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample arrays for plots

    def section(self, name: str) -> Section:
        for section in self.sections:
            if section.name == name:
                return section
        raise KeyError(f"no stats section {name!r}; sections are {[s.name for s in self.sections]}")

    def value(self, section: str, metric: str) -> float:
        for name, value in self.section(section).rows:
            if name == metric:
                return value
        raise KeyError(f"stats section {section!r} has no metric {metric!r}")

    def to_table(self) -> pa.Table:
        rows = [
            {"section": s.name, "metric": metric, "value": float(value)}
            for s in self.sections
            for metric, value in s.rows
        ]
        return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


class StatsInput:
    """What section builders read: the dataset's index, sample metadata and error table."""

    def __init__(self, dataset_dir: str | Path):
        self.dataset_dir = Path(dataset_dir)
        self.reader = DatasetReader(self.dataset_dir)
        self.index: pa.Table = self.reader.index
        self.errors: pa.Table | None = read_errors(self.dataset_dir)

    @cached_property
    def metas(self) -> list[dict]:
        """Metadata of every sample, in index order (one small read per sample)."""
        return [self.reader.read_meta(key) for key in self.reader.keys]

    def column(self, name: str) -> np.ndarray:
        """An index column as float64, nulls as NaN."""
        return self.index[name].to_numpy(zero_copy_only=False).astype(np.float64)


def read_errors(dataset_dir: Path) -> pa.Table | None:
    path = dataset_dir / ERRORS_FILE
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise CorruptShard(f"{path}: cannot read error table: {e}") from e
    missing = [c for c in ERRORS_COLUMNS if c not in table.column_names]
    if missing:
        raise CorruptShard(f"{path}: error table lacks column(s) {missing}")
    return table


SectionBuilder = Callable[[StatsInput], Section | None]


def _summary_rows(prefix: str, values: np.ndarray) -> list[tuple[str, float]]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return []
    return [
        (f"{prefix} min", float(values.min())),
        (f"{prefix} mean", float(values.mean())),
        (f"{prefix} median", float(np.median(values))),
        (f"{prefix} p95", float(np.percentile(values, 95))),
        (f"{prefix} max", float(values.max())),
    ]


def overview_section(data: StatsInput) -> Section:
    durations = data.column("duration_s")
    return Section(
        "overview",
        [
            ("shards", len(data.reader.shards)),
            ("samples", data.index.num_rows),
            ("video hours", float(np.nansum(durations)) / SECONDS_PER_HOUR),
            ("samples without duration_s", int(np.isnan(durations).sum())),
        ],
    )


def tokens_section(data: StatsInput) -> Section:
    vision, text, total = (data.column(c) for c in ("vision_tokens", "text_tokens", "tokens"))
    rows = [("vision", float(vision.sum())), ("text", float(text.sum())), ("total", float(total.sum()))]
    return Section("tokens", rows + _summary_rows("per sample", total))


def duration_section(data: StatsInput) -> Section:
    return Section("duration_s", _summary_rows("per sample", data.column("duration_s")))


def fps_section(data: StatsInput) -> Section:
    counts = Counter(_label(meta.get("sample_fps")) for meta in data.metas)
    return Section("sample_fps", sorted(counts.items()))


def sizes_section(data: StatsInput) -> Section:
    heights, widths = data.index["height"].to_pylist(), data.index["width"].to_pylist()
    counts = Counter(
        f"{h}x{w}" if h is not None and w is not None else "(none)" for h, w in zip(heights, widths)
    )
    return Section("size HxW", sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _bytes_per_video_hour(frames: np.ndarray, durations: np.ndarray) -> float:
    """Frames bytes per hour of source video, over the samples that record their duration."""
    timed = ~np.isnan(durations)
    hours = float(durations[timed].sum()) / SECONDS_PER_HOUR
    return float(frames[timed].sum()) / hours if hours > 0 else math.nan


def storage_section(data: StatsInput) -> Section:
    frames = data.column("frames_size")
    members = sum(float(data.column(f"{m}_size").sum()) for m in ("frames", "json", "text"))
    return Section(
        "storage",
        [
            ("frames bytes", float(frames.sum())),
            ("member bytes", members),
            ("frames bytes per video hour", _bytes_per_video_hour(frames, data.column("duration_s"))),
        ],
    )


def frame_codecs_section(data: StatsInput) -> Section:
    """Per frame codec: samples, bytes per video hour and, for lossy codecs, PSNR against the source.

    The PSNR is the one the writer measured on every ``PSNR_EVERY``-th frame against the frames
    the pipeline decoded (``shards.jpeg_frames``): pooled over the dataset (mean squared error of
    all measured frames) and the worst sample's.
    """
    codecs = np.array(data.index["frames_codec"].to_pylist(), dtype=object)
    frames, durations = data.column("frames_size"), data.column("duration_s")
    rows: list[tuple[str, float]] = []
    for codec in sorted(set(codecs)):
        mine = codecs == codec
        rows.append((f"{codec} samples", int(mine.sum())))
        rows.append(
            (f"{codec} frames bytes per video hour", _bytes_per_video_hour(frames[mine], durations[mine]))
        )
        if codec not in LOSSY_CODECS:
            continue
        measured = [
            meta[FRAMES_FIELD]["psnr"]
            for meta, is_mine in zip(data.metas, mine)
            if is_mine and meta[FRAMES_FIELD]["psnr"]["frames"]
        ]
        n = np.array([m["frames"] for m in measured], np.float64)
        mse = np.array([m["mse"] for m in measured], np.float64)
        if n.size:
            rows.append((f"{codec} frames compared with the source", float(n.sum())))
            rows.append((f"{codec} PSNR dB vs source", psnr_from_mse(float((n * mse).sum() / n.sum()))))
            rows.append((f"{codec} PSNR dB, worst sample", psnr_from_mse(float(mse.max()))))
    return Section("frame codecs", rows)


def errors_section(data: StatsInput) -> Section | None:
    if data.errors is None:
        return None
    pairs = zip(data.errors["stage"].to_pylist(), data.errors["reason"].to_pylist())
    counts = Counter(f"{stage}: {reason}" for stage, reason in pairs)
    rows = [("total", data.errors.num_rows)] + sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return Section("errors", rows)


def _label(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


DEFAULT_BUILDERS: tuple[SectionBuilder, ...] = (
    overview_section,
    tokens_section,
    duration_section,
    fps_section,
    sizes_section,
    storage_section,
    frame_codecs_section,
    errors_section,
)


def compute_stats(
    dataset_dir: str | Path, builders: Sequence[SectionBuilder] = DEFAULT_BUILDERS
) -> DatasetStats:
    data = StatsInput(dataset_dir)
    try:
        sections = [section for build in builders if (section := build(data)) is not None]
        series = {"tokens_per_sample": data.column("tokens"), "duration_s": data.column("duration_s")}
    finally:
        data.reader.close()
    return DatasetStats(sections=sections, series=series)


def _format_value(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}"


def format_table(stats: DatasetStats) -> str:
    """Aligned three-column text table: section, metric, value."""
    lines = [("section", "metric", "value")]
    for section in stats.sections:
        for i, (metric, value) in enumerate(section.rows or [("(empty)", math.nan)]):
            lines.append((section.name if i == 0 else "", metric, _format_value(value)))
    widths = [max(len(line[col]) for line in lines) for col in range(3)]
    out = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def write_stats(dataset_dir: str | Path, stats: DatasetStats) -> list[Path]:
    """Write ``stats.parquet`` and the plots under ``stats/``; returns the paths written."""
    dataset_dir = Path(dataset_dir)
    table_path = dataset_dir / STATS_FILE
    pq.write_table(stats.to_table(), table_path)
    plot_dir = dataset_dir / STATS_DIR
    plot_dir.mkdir(exist_ok=True)
    tokens_png = plot_dir / "tokens_per_sample.png"
    durations_png = plot_dir / "durations.png"
    _histogram(stats.series.get("tokens_per_sample"), "tokens per sample", "tokens", tokens_png)
    duration_s = stats.series.get("duration_s")
    _histogram(None if duration_s is None else duration_s / 60.0, "video duration", "minutes", durations_png)
    return [table_path, tokens_png, durations_png]


def _histogram(values: np.ndarray | None, title: str, xlabel: str, path: Path) -> None:
    # Figure + Agg canvas, not pyplot: no global backend state, safe in worker processes.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = np.asarray(values if values is not None else [], dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size:
        axes.hist(values, bins=min(50, max(1, values.size)))
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(f"{title} (n={values.size})")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("samples")
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compute and write statistics of a longshot dataset folder.")
    parser.add_argument("dataset_dir")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    stats = compute_stats(args.dataset_dir)
    print(format_table(stats))
    if not args.no_write:
        for path in write_stats(args.dataset_dir, stats):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
