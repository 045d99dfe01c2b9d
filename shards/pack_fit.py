"""Best-fit decreasing bin packing over integer sizes, in O(n log C).

Why best fit decreasing: with many samples much shorter than the sequence, BFD leaves almost
no gap (the small samples that come last fill the holes the big ones left), and samples longer
than half a sequence each need a sequence of their own in any packing, so their holes are the
only unavoidable waste. ``tests/shards/test_packing*.py`` measures the result against the lower
bound ``packs_lower_bound`` (Martello and Toth's L2: volume, samples over half a sequence, and
the room that samples too long to share must waste).

Why a repair after it (``tighten``): when that bound is tight (the demo dataset: 675 tokens of
slack over 51 sequences) BFD's greedy choices can cost one whole extra sequence, 2.5 % of a
small dataset. ``tighten`` re-packs the least-filled bins by exact subset-sums to win it back,
under a work budget that keeps it well under a second on 100,000 samples.

Why a segment tree over remaining capacities: the plain algorithm scans every open bin for each
item (O(n^2) with 100,000 samples). Remaining capacities are integers in [0, capacity], so a
tree of counts over that range finds the fullest bin an item still fits (the smallest remaining
capacity >= size) in O(log capacity) steps whatever the number of open bins.
"""

from collections.abc import Sequence

import numpy as np

# A tree over capacities up to this bound takes 2**25 list entries (256 MiB); far above any
# sequence length a transformer trains on, so a larger value is almost surely a unit mistake.
MAX_CAPACITY = (1 << 24) - 1


class CapacityIndex:
    """Open bins keyed by remaining capacity; finds the fullest bin that can still take an item."""

    def __init__(self, capacity: int):
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"bin capacity must be in [1, {MAX_CAPACITY}], got {capacity}")
        self._leaves = 1 << capacity.bit_length()  # leaf c counts bins with remaining capacity c
        self._tree = [0] * (2 * self._leaves)
        self._bins: dict[int, list[int]] = {}

    def add(self, remaining: int, bin_id: int) -> None:
        self._bins.setdefault(remaining, []).append(bin_id)
        node = remaining + self._leaves
        tree = self._tree
        while node:
            tree[node] += 1
            node >>= 1

    def pop_best_fit(self, size: int) -> tuple[int, int] | None:
        """Remove and return (remaining, bin_id) of the bin with the least room >= ``size``, or None.

        Among bins with equal room the one added last is returned, so the result depends only
        on the order of calls.
        """
        remaining = self._first_at_least(size)
        if remaining is None:
            return None
        stack = self._bins[remaining]
        bin_id = stack.pop()
        if not stack:
            del self._bins[remaining]
        node = remaining + self._leaves
        tree = self._tree
        while node:
            tree[node] -= 1
            node >>= 1
        return remaining, bin_id

    def _first_at_least(self, size: int) -> int | None:
        leaves, tree = self._leaves, self._tree
        if size >= leaves:
            return None
        node = size + leaves
        if tree[node]:
            return size
        # Climb until a right sibling (whose leaves all lie above ``size``) holds a bin.
        while True:
            if node == 1:
                return None
            if not node & 1 and tree[node + 1]:
                node += 1
                break
            node >>= 1
        # Descend to the leftmost non-empty leaf under it.
        while node < leaves:
            node <<= 1
            if not tree[node]:
                node += 1
        return node - leaves


def best_fit_decreasing(sizes: Sequence[int] | np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each item (int64, bins numbered in order of opening) under best fit decreasing.

    ``sizes`` must already be in the order items are placed (non-increasing for BFD proper;
    the caller decides ties). Every size must be in [1, capacity].
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size and (sizes.min() < 1 or sizes.max() > capacity):
        raise ValueError(f"item sizes must be in [1, {capacity}], got range [{sizes.min()}, {sizes.max()}]")
    index = CapacityIndex(capacity)
    assignment = np.empty(sizes.size, dtype=np.int64)
    opened = 0
    for item, size in enumerate(sizes.tolist()):
        found = index.pop_best_fit(size)
        if found is None:
            remaining, bin_id = capacity, opened
            opened += 1
        else:
            remaining, bin_id = found
        assignment[item] = bin_id
        left = remaining - size
        if left:
            index.add(left, bin_id)
    return assignment


def packs_lower_bound(sizes: Sequence[int] | np.ndarray, capacity: int) -> int:
    """No packing uses fewer bins (Martello and Toth's bound L2, which implies the simple ones).

    Why more than ``max(ceil(total / capacity), items over half)``: an item too big to share its
    bin with any small item wastes its bin's room, which the volume bound counts as usable; a
    dataset with a few samples just under the limit then reads as one pack short of a bound no
    packer can reach. For each threshold ``k`` (0 or an item size <= capacity / 2), items over
    ``capacity - k`` sit alone, items over half a bin need a bin each, and items in
    [k, capacity / 2] fit only in those bins' free room or in new bins:
    ``L(k) = big + half + ceil(max(0, small_total - room_left_by_half) / capacity)``, maximised
    over ``k``. O(n log n).
    """
    sizes = np.sort(np.asarray(sizes, dtype=np.int64))
    if sizes.size == 0:
        return 0
    by_volume = -(-int(sizes.sum()) // capacity)
    prefix = np.concatenate(([0], np.cumsum(sizes)))
    n = sizes.size
    half_end = int(np.searchsorted(sizes, capacity // 2, side="right"))  # sizes[half_end:] > C/2
    thresholds = np.unique(np.concatenate(([1], sizes[:half_end])))
    # Items in [k, C/2]; items in (C/2, C-k]; items > C-k.
    small_start = np.searchsorted(sizes, thresholds, side="left")
    big_start = np.searchsorted(sizes, capacity - thresholds, side="right")
    small_total = prefix[half_end] - prefix[small_start]
    half_count = big_start - half_end
    half_room = half_count * capacity - (prefix[big_start] - prefix[half_end])
    extra = np.maximum(0, small_total - half_room)
    bound = (n - big_start) + half_count + -(-extra // capacity)
    return int(max(by_volume, int(bound.max())))


# Work allowed to ``tighten`` per call, in subset-sum cells (one bit of a reachable-sums bitset
# updated for one item; ~40 ps each). A Python-level step over one item (list building, a loop
# turn) is charged PY_STEP cells, about its cost in time, so the budget bounds CPU time (~0.5 s)
# whatever mix of the two a hard instance causes. It counts work, not seconds, so the result
# never depends on the machine. A call that stops at the budget still returns a valid packing,
# only perhaps above the bound.
DEFAULT_REPAIR_WORK = 4_000_000_000
PY_STEP = 2000
# One subset-sum keeps the bitset before each item to read the subset back: at most this many
# bits (64 MiB). Past it the bin takes the tightest fill of the items seen so far.
MAX_DP_CELLS = 1 << 29
# Seeded re-tries of the whole-instance re-pack (see ``_tighten_once``); the seed is fixed, so
# the result depends only on the input.
RETRIES = 16
RETRY_SEED = 0x5EED


class _Budget:
    """Work left to a ``tighten`` call; shared by every step so the whole call stays bounded."""

    def __init__(self, cells: int):
        self.left = int(cells)

    def charge(self, cells: int) -> bool:
        """Spend ``cells``; False once the budget is spent (the caller gives up)."""
        self.left -= cells
        return self.left >= 0


def tighten(
    sizes: Sequence[int] | np.ndarray,
    assignment: np.ndarray,
    capacity: int,
    max_work: int = DEFAULT_REPAIR_WORK,
) -> np.ndarray:
    """Improve a packing (e.g. from ``best_fit_decreasing``) towards ``packs_lower_bound`` bins.

    Why: BFD can end a bin above the bound when the bound is tight (a few hundred tokens of
    slack in all), because it places each item greedily and never takes back where a small item
    went. Re-packing the items of the ``m`` least-filled bins into ``m - 1`` bins closes that
    gap when it can be closed locally; ``m`` doubles on failure up to all bins, so a gap that
    needs a global re-arrangement is closed too, within the work budget ``max_work``.

    The re-pack is minimum bin slack (``_min_slack_pack``): bins are filled one at a time, each
    with the largest item left plus the subset of the others that leaves the least room (an
    exact subset-sum over token counts), and an attempt stops as soon as the slack spent exceeds
    what ``m - 1`` bins allow. Deterministic: the result depends only on ``sizes`` (in their
    order), ``assignment`` and ``max_work``. Never worse than the input: bins only ever merge.
    Returns a new assignment with bins numbered 0.. in order of their first item.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    assignment = _renumber(np.asarray(assignment, dtype=np.int64))
    if sizes.size == 0:
        return assignment
    if assignment.shape != sizes.shape:
        raise ValueError(f"{sizes.size} sizes but {assignment.size} bin numbers")
    bound = packs_lower_bound(sizes, capacity)
    budget = _Budget(max_work)
    size_list = sizes.tolist()
    while int(assignment.max()) + 1 > bound and budget.charge(PY_STEP * sizes.size):
        if not _tighten_once(sizes, size_list, assignment, capacity, budget):
            break
        assignment = _renumber(assignment)
    return assignment


def _tighten_once(sizes: np.ndarray, size_list: list[int], assignment: np.ndarray, capacity: int,
                  budget: _Budget) -> bool:
    """Save one bin (in place) by re-packing the ``m`` least-filled bins into ``m - 1``; False if none works."""
    num_bins = int(assignment.max()) + 1
    loads = np.bincount(assignment, weights=sizes, minlength=num_bins).astype(np.int64)
    by_load = np.lexsort((np.arange(num_bins), loads))  # emptiest first, ties by bin number
    slack = np.cumsum(capacity - loads[by_load])
    m = max(2, int(np.searchsorted(slack, capacity)) + 1)  # fewest bins whose slack adds up to a bin
    while m <= num_bins:
        chosen = np.zeros(num_bins, dtype=bool)
        chosen[by_load[:m]] = True
        items = np.flatnonzero(chosen[assignment])
        items = items[np.argsort(-sizes[items], kind="stable")]
        if not budget.charge(PY_STEP * items.size):
            return False
        pool = [size_list[i] for i in items.tolist()]
        packed = _min_slack_pack(pool, m - 1, capacity, budget)
        # Last resort, once every bin is in the pool: the same heuristic with each bin's
        # candidates in a seeded random order, which changes which of the equally tight subsets
        # a bin takes (and so what is left for the bins after it).
        rng = np.random.default_rng(RETRY_SEED)
        for _ in range(RETRIES if m == num_bins else 0):
            if packed is not None or budget.left <= 0:
                break
            packed = _min_slack_pack(pool, m - 1, capacity, budget, rng)
        if packed is not None:
            free = by_load[: m - 1].tolist()  # reuse m - 1 of the old bin numbers, drop the last
            for item, new_bin in zip(items.tolist(), packed):
                assignment[item] = free[new_bin]
            return True
        if m == num_bins or budget.left <= 0:
            return False
        m = min(2 * m, num_bins)
    return False


def _min_slack_pack(sizes: list[int], bins: int, capacity: int, budget: _Budget,
                    rng: np.random.Generator | None = None) -> list[int] | None:
    """Bin (0..bins-1) of each item (``sizes`` non-increasing), or None where this heuristic finds none.

    Each bin takes the largest item left (it needs a bin anyway, and big items are the hard ones
    to place late) and then the subset of the rest that fills it tightest. Gives up as soon as
    the slack spent exceeds what ``bins`` bins allow, or the budget runs out.
    """
    total = sum(sizes)
    allowed_slack = bins * capacity - total
    if allowed_slack < 0:
        return None
    out = [-1] * len(sizes)
    left = list(range(len(sizes)))  # unplaced items, largest first
    left_total = total
    for b in range(bins):
        if not left:
            return out
        if left_total <= capacity:  # all that is left fits in this bin
            for i in left:
                out[i] = b
            return out
        if not budget.charge(PY_STEP * len(left)):
            return None
        first, rest = left[0], left[1:]
        if rng is not None:
            rest = [rest[j] for j in rng.permutation(len(rest)).tolist()]
        room = capacity - sizes[first]
        taken = _fill_tightest([sizes[i] for i in rest], room, budget)
        if taken is None:
            return None
        used = sizes[first] + sum(sizes[rest[j]] for j in taken)
        allowed_slack -= capacity - used
        if allowed_slack < 0:
            return None
        out[first] = b
        for j in taken:
            out[rest[j]] = b
        taken_set = set(taken)
        left = sorted(i for j, i in enumerate(rest) if j not in taken_set)
        left_total -= used
    return None if left else out


def _fill_tightest(sizes: list[int], room: int, budget: _Budget) -> list[int] | None:
    """Positions of a subset of ``sizes`` whose sum is the largest <= ``room`` (exact subset-sum).

    Reachable sums are the bits of a Python int (bit c set: some subset sums to c), updated per
    item with one shift and one or, at machine-word speed: ~10 us per item at room 262,144. The
    bitset before each item is kept, so the subset is read back from the best sum by walking the
    items backwards (an item is in it where the sum was not reachable before it). Stops early
    once ``room`` itself is reachable, and looks at no more items once the kept bitsets reach
    ``MAX_DP_CELLS``. None when the budget runs out.
    """
    if room <= 0:
        return []
    mask = (1 << (room + 1)) - 1
    reach = 1
    history: list[tuple[int, int]] = []  # (position, reachable sums before that item)
    copies: dict[int, int] = {}
    for position, size in enumerate(sizes):
        if size > room:
            continue
        count = copies.get(size, 0)
        if (count + 1) * size > room:  # more copies of one size than fit together add nothing
            continue
        copies[size] = count + 1
        if (len(history) + 1) * (room + 1) > MAX_DP_CELLS:
            break
        if not budget.charge(room + 1 + PY_STEP):
            return None
        history.append((position, reach))
        reach |= (reach << size) & mask
        if reach >> room & 1:
            break
    best = reach.bit_length() - 1
    taken = []
    for position, before in reversed(history):
        if best == 0:
            break
        if not before >> best & 1:  # this sum first became reachable with this item
            taken.append(position)
            best -= sizes[position]
    return taken


def _renumber(assignment: np.ndarray) -> np.ndarray:
    """Bins renumbered 0.. in order of their first item, so bin numbers carry no history."""
    if assignment.size == 0:
        return assignment.copy()
    _, first, inverse = np.unique(assignment, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]
