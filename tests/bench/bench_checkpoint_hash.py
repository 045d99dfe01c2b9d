"""Checkpoint checksum cost: hash speeds in memory, and manifest write / verify on a folder.

    python tests/bench/bench_checkpoint_hash.py [--mib 256] [--files 4] [--work DIR]
    python tests/bench/bench_checkpoint_hash.py --folder RUN/checkpoints/iter_NNNNNNN

Part 1 hashes one buffer of --mib MiB with zlib.crc32 (what jobs/checkpoint_manifest.py uses),
zlib.adler32, blake2b, sha256 and sha1, in the manifest's 4 MiB pieces: single-core GB/s.
Part 2 writes --files random files of --mib MiB into a temporary folder (or takes --folder, e.g.
a real checkpoint, which it only reads) and times write_manifest and verify in this one process
(the threads of one rank); the first read of a file may come from disk, later ones from the page
cache, so both are printed ("cold" is only cold when the files are not cached already).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.checkpoint_manifest import MANIFEST, verify, write_manifest

PIECE = 4 << 20


def _pieces(view):
    return (view[i:i + PIECE] for i in range(0, len(view), PIECE))


def hash_speeds(mib: int) -> list[tuple[str, float]]:
    view = memoryview(os.urandom(mib << 20))

    def crc(fn):
        def run():
            value = 0
            for piece in _pieces(view):
                value = fn(piece, value)
        return run

    def digest(name):
        def run():
            h = hashlib.new(name)
            for piece in _pieces(view):
                h.update(piece)
        return run

    cases = [("crc32 (zlib)", crc(zlib.crc32)), ("adler32 (zlib)", crc(zlib.adler32))]
    cases += [(name, digest(name)) for name in ("blake2b", "sha256", "sha1")]
    out = []
    for name, run in cases:
        t0 = time.perf_counter()
        run()
        out.append((name, len(view) / (time.perf_counter() - t0) / 1e9))
    return out


def folder_times(folder: Path) -> list[tuple[str, float]]:
    """A folder with a manifest (a real checkpoint) is only verified; else its manifest is
    written first."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    out = [("files, GB", size / 1e9)]
    read_only = (folder / MANIFEST).exists()
    for label in ("cold", "warm"):
        if not read_only:
            t0 = time.perf_counter()
            write_manifest(folder)
            out.append((f"write_manifest {label}, s", time.perf_counter() - t0))
        t0 = time.perf_counter()
        verdict = verify(folder)
        out.append((f"verify {label} ({verdict.state}), s", time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--work", help="where the random files go (default: a temporary folder)")
    ap.add_argument("--folder", help="an existing checkpoint folder to verify instead")
    args = ap.parse_args()

    print(f"{'hash (one core, in memory)':<30} {'GB/s':>8}")
    for name, speed in hash_speeds(args.mib):
        print(f"{name:<30} {speed:>8.2f}")

    if args.folder:
        folder, cleanup = Path(args.folder), False
    else:
        folder = Path(tempfile.mkdtemp(dir=args.work))
        cleanup = True
        for i in range(args.files):
            (folder / f"__{i}_0.distcp").write_bytes(os.urandom(args.mib << 20))
    try:
        print(f"\n{'folder ' + str(folder):<50}")
        for name, value in folder_times(folder):
            print(f"{name:<40} {value:>10.2f}")
    finally:
        if cleanup:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
