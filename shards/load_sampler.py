"""Which packs each data-parallel rank trains on, in which order, and how to resume exactly.

``PackSampler`` gives each of ``world_size`` ranks a disjoint, equal-count share of the packs
per epoch: the packs are permuted by a generator seeded with (seed, epoch), the permutation is
cut to a multiple of ``world_size`` (the few packs left over differ from epoch to epoch), and
rank r takes every world_size-th pack from r. Equal counts matter because every rank must run
the same number of steps or the collectives hang.

Why a wrapper for resume: a DataLoader with workers draws indices from its sampler ahead of the
trainer (``num_workers * prefetch_factor`` of them), so the sampler's own position counts packs
*produced*, not packs *trained on*. ``StatefulLoader`` counts the items it has handed to the
trainer and its ``state_dict`` records that, so a restart resumes at the first pack the
trainer has not seen, whatever the workers had prefetched.
"""

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler


class PackSampler(Sampler[int]):
    """Pack indices of one rank. Iterating yields the rest of the current epoch, then moves to the next."""

    def __init__(
        self, num_packs: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_packs < world_size:
            raise ValueError(f"{num_packs} packs cannot give each of {world_size} ranks at least one")
        self.num_packs = int(num_packs)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.position = 0  # next index of this rank's epoch order to hand out

    def __len__(self) -> int:
        """Packs per rank per epoch."""
        return self.num_packs // self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's pack indices for ``epoch``, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_packs)
        else:
            order = np.arange(self.num_packs)
        return order[: len(self) * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return self._epoch_iter(self.epoch, self.epoch_order(self.epoch), self.position)

    def _epoch_iter(self, epoch: int, order: np.ndarray, start: int) -> Iterator[int]:
        for position in range(start, order.size):
            self.position = position + 1
            yield int(order[position])
        if self.epoch == epoch:
            self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_packs": self.num_packs,
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("num_packs", "rank", "world_size", "seed", "shuffle"):
            if name in state and state[name] != getattr(self, name):
                raise ValueError(
                    f"sampler state was saved with {name}={state[name]!r}, this sampler has {getattr(self, name)!r}; "
                    "an exact resume needs the same plan, seed and data-parallel layout"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(
                f"sampler state epoch={epoch}, position={position} is out of range (0..{len(self)})"
            )
        self.epoch, self.position = (epoch + 1, 0) if position == len(self) else (epoch, position)


class StatefulLoader:
    """A DataLoader over a pack dataset (one pack per item) whose state counts items the trainer consumed.

    ``for batch in loader`` runs the rest of the current epoch; the next loop runs the next
    epoch. Save ``state_dict()`` after the step that used the last batch has finished; after
    ``load_state_dict`` the next loop yields exactly the items an uninterrupted run would have.
    Extra keyword arguments go to ``torch.utils.data.DataLoader`` (``num_workers``,
    ``prefetch_factor``, ``pin_memory``, ``persistent_workers``, ...).
    """

    def __init__(self, dataset: Dataset, sampler: PackSampler, **loader_kwargs):
        if len(dataset) != sampler.num_packs:  # type: ignore[arg-type]
            raise ValueError(f"dataset has {len(dataset)} packs but the sampler expects {sampler.num_packs}")  # type: ignore[arg-type]
        self.sampler = sampler
        self.loader = DataLoader(dataset, batch_size=None, sampler=sampler, **loader_kwargs)
        self._epoch = sampler.epoch
        self._consumed = sampler.position

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        # Rewind the sampler past whatever workers prefetched in an abandoned loop.
        self.sampler.load_state_dict(self.state_dict())
        self._epoch, self._consumed = self.sampler.epoch, self.sampler.position
        batches = iter(self.loader)
        try:
            for batch in batches:
                self._consumed += 1
                yield batch
        finally:
            # Stop the workers now. Left to the garbage collector (an exception's traceback
            # keeps the iterator in a reference cycle), torch's worker shutdown runs inside the
            # cyclic collector and waits out a 5 s join timeout per worker.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None and not self.loader.persistent_workers:
                shutdown()

    def state_dict(self) -> dict:
        state = self.sampler.state_dict()
        epoch, consumed = self._epoch, self._consumed
        if consumed == len(self.sampler):
            epoch, consumed = epoch + 1, 0
        state.update(epoch=epoch, position=consumed)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._epoch, self._consumed = self.sampler.epoch, self.sampler.position
