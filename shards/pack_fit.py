"""Best-fit decreasing bin packing over integer sizes, in O(n log C).

Why best fit decreasing: with many samples much shorter than the sequence, BFD leaves almost
no gap (the small samples that come last fill the holes the big ones left), and samples longer
than half a sequence each need a sequence of their own in any packing, so their holes are the
only unavoidable waste. ``tests/shards/test_packing*.py`` measures the result against the lower
bound ``max(ceil(total / capacity), samples longer than capacity / 2)``.

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
    """No packing uses fewer bins: total size over capacity, and one bin per item over half of it."""
    sizes = np.asarray(sizes, dtype=np.int64)
    by_volume = -(-int(sizes.sum()) // capacity)
    by_halves = int((sizes > capacity // 2).sum())
    return max(by_volume, by_halves)
