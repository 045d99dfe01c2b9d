"""Checksums of a checkpoint's files: written at commit, verified before a resume trusts it.

`manifest.json` lists every file of a checkpoint folder (relative path, size, CRC-32). It is
written into iter_NNNNNNN.tmp after every rank has written its files and before the folder is
fsynced and renamed, so a committed checkpoint and its manifest appear together or not at all.

Why CRC-32 (zlib) and the size: the manifest guards against accidental damage (a flipped byte, a
truncated or lost file), not against tampering: whoever can change a file can rewrite the
manifest too, so loading is made safe on its own (jobs/safe_load.py). CRC-32 catches every
error burst up to 32 bits and misses a random change with probability 2^-32; zlib computes it at
about 4 GB/s on one core, against 0.9 for blake2b and 1.8 for sha256 (tests/bench/RESULTS.md),
so hashing a large checkpoint costs about what reading it from disk does. The size catches a
truncation outright. Files are read in 4 MiB pieces; under torch.distributed every rank hashes
a share of the files (balanced by size) with a few threads (zlib and file reads release the
GIL), so checkpoints of hundreds of GB are not hashed by rank 0 alone.
Megatron's own manifest (dist_checkpointing.save(verify_integrity=True)) is not used: it covers
only the top-level files (not rng/), hashes with SHA-256 on rank 0 alone, and cannot say which
checkpoint to fall back to.
"""
from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

MANIFEST = "manifest.json"
_PIECE = 4 << 20
_THREADS = 4

INTACT, DAMAGED, UNVERIFIED = "intact", "damaged", "unverified"
SIZES_MATCH = "sizes match (not hashed)"  # check_sizes: every file there at its size


@dataclass(frozen=True)
class Verdict:
    """What a check of one checkpoint folder found; `file` names the first damaged file."""

    folder: Path
    state: str  # intact | damaged | unverified (no manifest: written before checksums existed)
    file: str | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.state == INTACT:
            return f"{self.folder}: intact"
        where = f"{self.file}: " if self.file else ""
        return f"{self.folder}: {self.state}: {where}{self.reason}"


def file_checksum(path: Path) -> dict:
    """{"bytes", "crc32"} of a file, or {"error"} when it cannot be read."""
    crc, size = 0, 0
    try:
        with open(path, "rb") as f:
            while piece := f.read(_PIECE):
                crc = zlib.crc32(piece, crc)
                size += len(piece)
    except FileNotFoundError:
        return {"error": "missing"}
    except OSError as exc:
        return {"error": f"unreadable ({exc.strerror or exc})"}
    return {"bytes": size, "crc32": f"{crc:08x}"}


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def from_rank0(obj):
    """Rank 0's value on every rank (all ranks call it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _share(sizes: dict[str, int], world: int) -> list[list[str]]:
    """Files per rank, largest first to the least loaded (the same on every rank)."""
    shares, loads = [[] for _ in range(world)], [0] * world
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        r = loads.index(min(loads))
        shares[r].append(name)
        loads[r] += sizes[name]
    return shares


def checksums(folder: Path, sizes: dict[str, int]) -> dict[str, dict]:
    """file_checksum of every named file, spread over the ranks; every rank gets all of them.
    Collective when torch.distributed is initialised; `sizes` (name -> expected bytes) must be
    the same on every rank and only balances the work."""
    rank, world = _rank_world()
    mine = _share(sizes, world)[rank]
    with ThreadPoolExecutor(_THREADS) as pool:
        local = dict(zip(mine, pool.map(lambda n: file_checksum(folder / n), mine)))
    if world == 1:
        return local
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    return {name: sums for part in gathered for name, sums in part.items()}


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path) -> None:
    """Collective: hash every file of `folder` (all ranks' files are written); rank 0 writes
    the manifest. The caller fsyncs and commits the folder afterwards."""
    folder = Path(folder)
    rank, _ = _rank_world()
    sizes = from_rank0(_files(folder) if rank == 0 else None)
    sums = checksums(folder, sizes)
    if rank == 0:
        bad = {n: s["error"] for n, s in sums.items() if "error" in s}
        if bad:
            raise RuntimeError(f"{folder}: cannot checksum {bad} while committing the checkpoint")
        doc = {"algorithm": "crc32", "files": dict(sorted(sums.items()))}
        (folder / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")


def _read_manifest(folder: Path) -> dict | Verdict:
    """The manifest's files, or the Verdict when there is no usable manifest."""
    path = folder / MANIFEST
    if not path.exists():
        return Verdict(folder, UNVERIFIED, MANIFEST, "missing (no checksums to verify against)")
    try:
        files = json.loads(path.read_text())["files"]
        if not all(isinstance(s.get("bytes"), int) and isinstance(s.get("crc32"), str)
                   for s in files.values()):
            raise ValueError("an entry lacks bytes or crc32")
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return Verdict(folder, DAMAGED, MANIFEST, f"unreadable ({exc})")


def _compare(folder: Path, want: dict, got: dict) -> Verdict:
    for name in sorted(want):
        w, g = want[name], got[name]
        if "error" in g:
            return Verdict(folder, DAMAGED, name, g["error"])
        if g["bytes"] != w["bytes"]:
            return Verdict(folder, DAMAGED, name, f"{g['bytes']:,} bytes, {w['bytes']:,} when written")
        if g["crc32"] != w["crc32"]:
            return Verdict(folder, DAMAGED, name, f"content changed (crc32 {g['crc32']}, "
                                                  f"{w['crc32']} when written)")
    return Verdict(folder, INTACT)


def check_sizes(folder: Path) -> Verdict:
    """What a listing can tell without reading contents: every file the manifest lists is there
    at its size (catches deletion and truncation, not a flipped byte). One process, not
    collective: for `longshot status --quick` on checkpoints too big to hash in passing."""
    folder = Path(folder)
    want = _read_manifest(folder)
    if isinstance(want, Verdict):
        return want
    for name in sorted(want):
        try:
            size = (folder / name).stat().st_size
        except OSError:
            return Verdict(folder, DAMAGED, name, "missing")
        if size != want[name]["bytes"]:
            return Verdict(folder, DAMAGED, name, f"{size:,} bytes, {want[name]['bytes']:,} when written")
    return Verdict(folder, SIZES_MATCH)


def verify(folder: Path) -> Verdict:
    """Collective: check every file the manifest lists. All ranks return the same Verdict (rank
    0 reads the manifest; the checksums are gathered on every rank and compared alike)."""
    folder = Path(folder)
    rank, _ = _rank_world()
    want = from_rank0(_read_manifest(folder) if rank == 0 else None)
    if isinstance(want, Verdict):
        return want
    got = checksums(folder, {n: s["bytes"] for n, s in want.items()})
    return _compare(folder, want, got)
