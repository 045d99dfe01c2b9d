"""How good a pack plan is: efficiency against the best possible, fill and samples per pack.

Efficiency alone can mislead: a dataset of many samples just over half a sequence cannot be
packed above ~50 %, whatever the algorithm. So the stats also give the lower bound on the
number of packs (``shards.pack_fit.packs_lower_bound``, which also counts the room that
samples too long to share a pack must waste) and the efficiency that bound allows;
the gap between the two is what the packer left on the table. On a small dataset the last,
part-filled pack dominates efficiency, so ``efficiency_without_emptiest`` leaves it out.

``pack_stats`` returns plain numbers and lists (JSON-friendly, for the pack job's record);
``pack_sections`` turns them into ``shards.stats`` sections so ``longshot stats`` prints them in
the same table as the dataset statistics, and ``format_pack_stats`` renders that table alone.
"""

import numpy as np

from shards.pack_fit import packs_lower_bound
from shards.packing import PackPlan
from shards.stats import DatasetStats, Section, format_table

# Fill fraction bins: the interesting detail is near 1.0.
FILL_EDGES = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def pack_stats(plan: PackPlan) -> dict:
    """Summary numbers of a plan, plus histogram data (``fill_histogram``, ``samples_histogram``)."""
    tokens = plan.pack_tokens.astype(np.float64)
    per_pack = plan.samples_per_pack
    bound = packs_lower_bound(plan.tokens, plan.max_tokens) if plan.num_samples else 0
    fill = tokens / plan.max_tokens
    fill_counts, _ = np.histogram(fill, bins=FILL_EDGES)
    sizes, size_counts = np.unique(per_pack, return_counts=True)
    empty = plan.num_packs == 0
    return {
        "max_tokens": plan.max_tokens,
        "seed": plan.seed,
        "packs": plan.num_packs,
        "samples": plan.num_samples,
        "tokens": plan.total_tokens,
        "efficiency": plan.efficiency,
        "packs_lower_bound": bound,
        "efficiency_bound": plan.total_tokens / (bound * plan.max_tokens) if bound else 1.0,
        "efficiency_without_emptiest": _without_emptiest(plan),
        "tokens_per_pack_min": 0 if empty else int(tokens.min()),
        "tokens_per_pack_mean": 0.0 if empty else float(tokens.mean()),
        "tokens_per_pack_p5": 0.0 if empty else float(np.percentile(tokens, 5)),
        "tokens_per_pack_max": 0 if empty else int(tokens.max()),
        "samples_per_pack_min": 0 if empty else int(per_pack.min()),
        "samples_per_pack_mean": 0.0 if empty else float(per_pack.mean()),
        "samples_per_pack_median": 0.0 if empty else float(np.median(per_pack)),
        "samples_per_pack_max": 0 if empty else int(per_pack.max()),
        "fill_histogram": {"edges": list(FILL_EDGES), "counts": fill_counts.tolist()},
        "samples_histogram": {"samples": sizes.tolist(), "packs": size_counts.tolist()},
    }


def _without_emptiest(plan: PackPlan) -> float:
    """Efficiency of all packs but the least full: the tail pack of a small dataset says nothing of the packer."""
    if plan.num_packs < 2:
        return 1.0
    tokens = plan.pack_tokens
    return float(tokens.sum() - tokens.min()) / ((plan.num_packs - 1) * plan.max_tokens)


def pack_sections(stats: dict) -> list[Section]:
    """``pack_stats`` output as ``shards.stats`` sections: summary, fill histogram, samples per pack."""
    summary = [
        (name.replace("_", " "), value) for name, value in stats.items() if not isinstance(value, dict)
    ]
    edges, counts = stats["fill_histogram"]["edges"], stats["fill_histogram"]["counts"]
    fill = [
        (f"fill [{lo:g}, {hi:g}{']' if i == len(counts) - 1 else ')'}", n)
        for i, (lo, hi, n) in enumerate(zip(edges[:-1], edges[1:], counts))
    ]
    return [
        Section("packing", summary),
        Section("pack fill", fill),
        Section("samples per pack", _per_pack_rows(stats)),
    ]


def _per_pack_rows(stats: dict) -> list[tuple[str, int]]:
    """Packs by number of samples in power-of-two buckets (1, 2-3, 4-7, ...): a pack can hold thousands."""
    hist = stats["samples_histogram"]
    buckets: dict[int, int] = {}
    for size, packs in zip(hist["samples"], hist["packs"]):
        low = 1 << (int(size).bit_length() - 1)
        buckets[low] = buckets.get(low, 0) + packs
    return [(f"{low}" if low == 1 else f"{low}-{2 * low - 1}", n) for low, n in sorted(buckets.items())]


def format_pack_stats(stats: dict) -> str:
    """The aligned text table ``longshot stats`` prints for a pack plan."""
    return format_table(DatasetStats(sections=pack_sections(stats)))
