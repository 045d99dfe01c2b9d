"""`longshot stats` and `longshot verify`: read-only looks at a finished dataset folder."""
from __future__ import annotations

from pathlib import Path

from shards.pack_stats import pack_sections, pack_stats
from shards.packing import PackPlan
from shards.stats import compute_stats, format_table, write_stats
from shards.verify import format_report, verify_dataset


def register(sub) -> None:
    p = sub.add_parser("stats", help="dataset statistics: table, stats.parquet, PNG histograms")
    p.add_argument("dir", help="a dataset folder written by preprocess")
    p.add_argument("--packs", help="a pack plan folder to include (default: DIR/packs if present)")
    p.set_defaults(func=_stats)
    p = sub.add_parser("verify", help="check every shard against its index and checksums")
    p.add_argument("dir", help="a dataset folder written by preprocess")
    p.set_defaults(func=_verify)


def _stats(args) -> int:
    stats = compute_stats(Path(args.dir))
    plan_path = Path(args.packs or Path(args.dir) / "packs") / "packs.parquet"
    if plan_path.exists():
        stats.sections.extend(pack_sections(pack_stats(PackPlan.read(plan_path))))
    written = write_stats(Path(args.dir), stats)
    print(format_table(stats))
    print(f"written: {', '.join(str(p) for p in written)}")
    return 0


def _verify(args) -> int:
    report = verify_dataset(Path(args.dir))
    print(format_report(report))
    return 0 if report.ok else 1
