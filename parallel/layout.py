"""A parallel layout from a small spec: the LM's context (c), expert (e) and data (d) sizes.

Tensor and pipeline parallel are 1 (REFERENCES.md: the torch RMSNorm refuses sequence
parallelism). The dense part of the LM spans c x d ranks; Megatron carves expert parallelism
out of those same ranks, so e divides c x d and the expert data-parallel size is c x d / e.
The ViT is data-parallel over all c x d ranks. Rank r has context rank r % c and data rank
r // c (Megatron's default order tp-cp-ep-dp-pp), so the ranks of one pack are neighbours.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    cp: int = 1
    ep: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        if min(self.cp, self.ep, self.dp) < 1:
            raise ValueError(f"layout sizes must be positive: {self}")
        if self.world % self.ep:
            raise ValueError(f"expert parallel {self.ep} must divide cp x dp = {self.world}")

    @property
    def world(self) -> int:
        return self.cp * self.dp

    @classmethod
    def for_world(cls, world: int, cp: int = 1, ep: int = 1) -> Layout:
        """The layout of `world` ranks with the given context and expert sizes (the rest is data)."""
        if world % cp:
            raise ValueError(f"context parallel {cp} must divide the {world} ranks")
        return cls(cp=cp, ep=ep, dp=world // cp)

    @classmethod
    def parse(cls, spec: str) -> Layout:
        """'cp2,ep2,dp1' (any order, missing sizes are 1) -> Layout."""
        sizes = {}
        for part in filter(None, re.split(r"[,\s]+", spec.strip())):
            m = re.fullmatch(r"(cp|ep|dp)(\d+)", part)
            if not m:
                raise ValueError(f"bad layout part {part!r} in {spec!r}: use cpN, epN, dpN")
            sizes[m.group(1)] = int(m.group(2))
        return cls(**sizes)

    def cp_rank(self, rank: int) -> int:
        return rank % self.cp

    def dp_rank(self, rank: int) -> int:
        return rank // self.cp

    def __str__(self) -> str:
        return f"cp{self.cp},ep{self.ep},dp{self.dp}"

    def check_model(self, experts: int) -> None:
        if experts % self.ep:
            raise ValueError(f"{experts} experts cannot be split over expert parallel {self.ep}")
