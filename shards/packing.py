"""The pack plan: which samples make up each packed training sequence, in which order.

``pack_samples`` assigns every sample to a sequence of at most ``max_tokens`` tokens by best fit
decreasing followed by a bounded repair (``shards.pack_fit``) and orders the result with one seeded generator, so the same
samples and seed always give the same plan, whatever order the samples were listed in:

1. samples are put in a canonical order (by key), then sorted by length, longest first, with ties
   broken by a seeded permutation (so another seed also changes which samples share a pack);
2. best fit decreasing assigns them to packs; where that leaves more packs than the lower bound
   (``packs_lower_bound``), ``tighten`` re-packs the least-filled packs by exact subset-sums to
   save a pack (BFD alone can miss the bound by one on small, tightly packable datasets such as
   the demo's: 52 packs where 51 suffice); its work is bounded, so 100,000 samples stay fast;
3. packs are emitted in a seeded shuffled order, and samples inside a pack in a seeded shuffled
   order, so training does not see all long videos first or a pack's samples by size.

Nothing is truncated: a sample longer than ``max_tokens`` raises ``SampleTooLong``.

``PackPlan`` holds one row per sample (pack, position in pack, key, shard, tokens, offset of the
sample within the pack) sorted by pack then position, and round-trips through ``packs.parquet``.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.pack_fit import best_fit_decreasing, tighten

DEFAULT_MAX_TOKENS = 262_144
PLAN_FILE = "packs.parquet"
PLAN_FORMAT = 1

PLAN_SCHEMA = pa.schema(
    [
        pa.field("pack", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string()),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
    ]
)


class SampleTooLong(ValueError):
    """A sample has more tokens than one packed sequence holds; it would have to be cut."""

    def __init__(self, key: str, tokens: int, max_tokens: int):
        super().__init__(
            f"sample {key!r} has {tokens:,} tokens, more than max_tokens={max_tokens:,}; "
            "re-plan it with a smaller budget (nothing is truncated)"
        )
        self.key = key
        self.tokens = tokens
        self.max_tokens = max_tokens

    def __reduce__(self):  # picklable, so it crosses process boundaries (Ray tasks, DataLoader workers)
        return type(self), (self.key, self.tokens, self.max_tokens)


@dataclass(frozen=True, eq=False)
class PackPlan:
    """One row per sample, sorted by (pack, position). Arrays are parallel; packs are 0..num_packs-1."""

    pack: np.ndarray  # int64
    position: np.ndarray  # int32, 0.. within the pack
    key: np.ndarray  # object (str)
    shard: np.ndarray  # object (str or None)
    tokens: np.ndarray  # int64
    offset: np.ndarray  # int64: first token of the sample within its pack
    max_tokens: int
    seed: int

    # -- shape -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.pack.size)

    @cached_property
    def _starts(self) -> np.ndarray:
        """Row where each pack begins, plus one past the end."""
        return np.searchsorted(self.pack, np.arange(self.num_packs + 1)).astype(np.int64)

    @cached_property
    def num_packs(self) -> int:
        return int(self.pack[-1]) + 1 if self.pack.size else 0

    def __len__(self) -> int:
        return self.num_packs

    def rows(self, pack: int) -> slice:
        """Rows of one pack, in position order."""
        if not 0 <= pack < self.num_packs:
            raise IndexError(f"pack {pack} out of range: the plan has {self.num_packs} packs")
        return slice(int(self._starts[pack]), int(self._starts[pack + 1]))

    def pack_keys(self, pack: int) -> list[str]:
        return list(self.key[self.rows(pack)])

    @cached_property
    def pack_tokens(self) -> np.ndarray:
        """Real tokens of each pack (int64 [num_packs])."""
        return np.add.reduceat(self.tokens, self._starts[:-1]) if self.num_packs else np.zeros(0, np.int64)

    @cached_property
    def samples_per_pack(self) -> np.ndarray:
        return np.diff(self._starts)

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def efficiency(self) -> float:
        """Real tokens over the room of all packs (num_packs x max_tokens); 1.0 for an empty plan."""
        return self.total_tokens / (self.num_packs * self.max_tokens) if self.num_packs else 1.0

    # -- Parquet ---------------------------------------------------------------------------
    def to_table(self) -> pa.Table:
        metadata = {
            "longshot.pack_format": str(PLAN_FORMAT),
            "longshot.max_tokens": str(self.max_tokens),
            "longshot.seed": str(self.seed),
        }
        arrays = [
            pa.array(self.pack, pa.int64()),
            pa.array(self.position, pa.int32()),
            pa.array(self.key.tolist(), pa.string()),
            pa.array(self.shard.tolist(), pa.string()),
            pa.array(self.tokens, pa.int64()),
            pa.array(self.offset, pa.int64()),
        ]
        return pa.Table.from_arrays(arrays, schema=PLAN_SCHEMA.with_metadata(metadata))

    def write(self, path: str | Path) -> Path:
        """Write the plan as Parquet (a folder gets ``packs.parquet`` inside) and fsync it."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        with open(path, "wb") as f:
            pq.write_table(self.to_table(), f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        return path

    @classmethod
    def read(cls, path: str | Path) -> "PackPlan":
        """Read a plan written by ``write`` (a file, or a folder holding ``packs.parquet``)."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        try:
            max_tokens = int(meta[b"longshot.max_tokens"])
            seed = int(meta[b"longshot.seed"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a longshot pack plan (schema metadata lacks {e})") from e
        missing = [name for name in PLAN_SCHEMA.names if name not in table.column_names]
        if missing:
            raise ValueError(f"{path}: pack plan lacks column(s) {missing}")
        table = table.select(PLAN_SCHEMA.names).cast(PLAN_SCHEMA)
        plan = cls(
            pack=table["pack"].to_numpy().astype(np.int64),
            position=table["position"].to_numpy().astype(np.int32),
            key=_object_array(table["key"].to_pylist()),
            shard=_object_array(table["shard"].to_pylist()),
            tokens=table["tokens"].to_numpy().astype(np.int64),
            offset=table["offset"].to_numpy().astype(np.int64),
            max_tokens=max_tokens,
            seed=seed,
        )
        plan.check(str(path))
        return plan

    def check(self, what: str = "pack plan") -> None:
        """Raise ValueError unless rows are sorted, positions and offsets consistent, packs within limit."""
        n = self.num_samples
        if not all(a.shape == (n,) for a in (self.position, self.key, self.shard, self.tokens, self.offset)):
            raise ValueError(f"{what}: columns have different lengths")
        if n == 0:
            return
        if self.pack[0] != 0 or not np.isin(np.diff(self.pack), (0, 1)).all():
            raise ValueError(f"{what}: pack numbers are not sorted and contiguous from 0")
        expected_position, expected_offset = _layout(self.pack, self.tokens)
        if not np.array_equal(self.position, expected_position):
            raise ValueError(f"{what}: positions are not 0, 1, ... within each pack")
        if not np.array_equal(self.offset, expected_offset):
            raise ValueError(f"{what}: offsets do not add up the tokens before each sample")
        if self.pack_tokens.max() > self.max_tokens:
            pack = int(np.argmax(self.pack_tokens))
            raise ValueError(
                f"{what}: pack {pack} has {self.pack_tokens[pack]} tokens > max_tokens {self.max_tokens}"
            )
        if len(set(self.key.tolist())) != n:
            raise ValueError(f"{what}: a sample key appears in more than one row")


def pack_samples(
    lengths: Mapping[str, int] | tuple[Sequence[str], Sequence[int]],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    shards: Mapping[str, str] | Sequence[str] | None = None,
) -> PackPlan:
    """Pack samples into sequences of at most ``max_tokens`` tokens.

    ``lengths`` is ``{key: tokens}`` or a pair of parallel sequences ``(keys, tokens)``.
    ``shards`` optionally names each sample's shard (a mapping by key, or a sequence parallel
    to the keys); it is stored in the plan so a loader can go straight to the shard.
    """
    keys, tokens, shard_names = _columns(lengths, shards)
    _check_lengths(keys, tokens, max_tokens)
    rng = np.random.default_rng(seed)

    canonical = np.argsort(keys, kind="stable")
    keys, tokens, shard_names = keys[canonical], tokens[canonical], shard_names[canonical]
    tiebreak = rng.permutation(keys.size)
    order = np.lexsort((tiebreak, -tokens))  # longest first, seeded among equals
    bins = np.empty(keys.size, np.int64)
    sorted_tokens = tokens[order]
    bins[order] = tighten(sorted_tokens, best_fit_decreasing(sorted_tokens, max_tokens), max_tokens)

    num_packs = int(bins.max()) + 1 if bins.size else 0
    pack_of_bin = rng.permutation(num_packs)
    pack = pack_of_bin[bins]
    rows = np.lexsort((rng.random(keys.size), pack))  # by pack, then a seeded shuffle inside
    pack, keys, tokens, shard_names = pack[rows], keys[rows], tokens[rows], shard_names[rows]

    position, offset = _layout(pack, tokens)
    return PackPlan(pack=pack.astype(np.int64), position=position, key=keys, shard=shard_names, tokens=tokens,
                    offset=offset, max_tokens=int(max_tokens), seed=int(seed))


def _layout(pack: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position in pack (int32) and first-token offset in pack (int64) of rows sorted by pack."""
    if pack.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    first = np.flatnonzero(np.r_[True, pack[1:] != pack[:-1]])
    counts = np.diff(np.r_[first, pack.size])
    cumulative = np.cumsum(tokens) - tokens
    position = (np.arange(pack.size) - np.repeat(first, counts)).astype(np.int32)
    return position, cumulative - np.repeat(cumulative[first], counts)


def pack_index(index: pa.Table, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0) -> PackPlan:
    """Pack the samples of a dataset index (``DatasetReader.index``: ``key``, ``tokens``, ``shard``)."""
    keys = index["key"].to_pylist()
    tokens = index["tokens"].to_numpy()
    shards = index["shard"].to_pylist() if "shard" in index.column_names else None
    return pack_samples((keys, tokens), max_tokens=max_tokens, seed=seed, shards=shards)


def _columns(lengths, shards) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(lengths, Mapping):
        key_list = list(lengths.keys())
        token_list = list(lengths.values())
    else:
        key_list, token_list = lengths
        key_list = list(key_list)
    keys = _object_array(key_list)
    tokens = np.asarray(token_list)
    if tokens.size == 0:
        tokens = tokens.astype(np.int64)
    if tokens.shape != (keys.size,):
        raise ValueError(f"{keys.size} keys but {tokens.size} token counts")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"token counts must be integers, got dtype {tokens.dtype}")
    tokens = tokens.astype(np.int64)
    if shards is None:
        shard_names = np.full(keys.size, None, dtype=object)
    elif isinstance(shards, Mapping):
        try:
            shard_names = _object_array([shards[k] for k in key_list])
        except KeyError as e:
            raise ValueError(f"no shard given for sample {e.args[0]!r}") from None
    else:
        shard_names = _object_array(list(shards))
        if shard_names.size != keys.size:
            raise ValueError(f"{keys.size} keys but {shard_names.size} shard names")
    return keys, tokens, shard_names


def _check_lengths(keys: np.ndarray, tokens: np.ndarray, max_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if len(set(keys.tolist())) != keys.size:
        seen: set = set()
        dupes = [k for k in keys.tolist() if k in seen or seen.add(k)]
        raise ValueError(f"sample keys appear more than once: {dupes[:5]}")
    if keys.size == 0:
        return
    too_long = np.flatnonzero(tokens > max_tokens)
    if too_long.size:
        i = int(too_long[np.argmax(tokens[too_long])])
        raise SampleTooLong(str(keys[i]), int(tokens[i]), int(max_tokens))
    empty = np.flatnonzero(tokens < 1)
    if empty.size:
        i = int(empty[0])
        raise ValueError(f"sample {keys[i]!r} has {tokens[i]} tokens; every sample needs at least one")


def _object_array(values: list) -> np.ndarray:
    """A 1-D object array of ``values`` (numpy would build a fixed-width str array otherwise)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
