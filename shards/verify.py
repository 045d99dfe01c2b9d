"""``verify_dataset``: check a dataset folder end to end and list every problem found.

Checks, per shard: sha256 and size of tar and index against ``dataset.parquet``; the tar
parses with ``tarfile`` and ends with a proper end-of-archive marker; the tar's members are
exactly the index's, in order, at the index's offsets and sizes; every member's crc32; row
count and token total against the manifest. With ``decode=True`` every sample is also read
back in full (frames by their codec: zstd, or every JPEG through libjpeg; JSON, .npy) and its
metadata compared with its index row.

Problems are collected, not raised, so one run reports everything that is wrong.
"""

import argparse
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from shards.checksums import sha256_file
from shards.errors import InvalidKey, ShardError
from shards.format import (
    BLOCK_SIZE,
    DEFAULT_FRAME_CODEC,
    FRAMES_EXTENSIONS,
    MANIFEST_FILE,
    MEMBERS,
    SHARD_PREFIX,
    SHARDS_DIR,
    TAR_SUFFIX,
    index_path_for,
    member_name,
    name_from_path,
    validate_key,
)
from shards.index import TOKEN_FIELDS, read_index
from shards.manifest import ShardSummary, read_manifest
from shards.ranges import RangeReader
from shards.reader import ShardReader

_ZERO_CHECK_LIMIT = 1 << 20  # the end-of-archive padding is at most one record; never read more


@dataclass(frozen=True)
class Problem:
    shard: str | None
    key: str | None
    reason: str

    def __str__(self) -> str:
        where = " ".join(part for part in (self.shard, f"key={self.key!r}" if self.key else None) if part)
        return f"{where or 'dataset'}: {self.reason}"


@dataclass
class VerifyReport:
    dataset_dir: Path
    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(dataset_dir: str | Path, *, decode: bool = False) -> VerifyReport:
    dataset_dir = Path(dataset_dir)
    report = VerifyReport(dataset_dir=dataset_dir)
    on_disk = {name_from_path(p): p for p in (dataset_dir / SHARDS_DIR).glob(f"{SHARD_PREFIX}*{TAR_SUFFIX}")}
    try:
        expected: dict[str, ShardSummary | None] = {s.name: s for s in read_manifest(dataset_dir)}
    except (FileNotFoundError, ShardError) as e:
        report.problems.append(Problem(None, None, f"{MANIFEST_FILE}: {e}"))
        expected = dict.fromkeys(sorted(on_disk))
    for name in sorted(set(on_disk) - set(expected)):
        report.problems.append(Problem(name, None, f"shard is in {SHARDS_DIR}/ but not in {MANIFEST_FILE}"))

    seen_keys: dict[str, str] = {}
    for name, summary in expected.items():
        tar_path = summary.tar_path if summary else on_disk[name]
        checker = _ShardCheck(name, tar_path, summary, report.problems)
        keys = checker.run(decode=decode)
        report.shards += 1
        report.samples += len(keys)
        for key in keys:
            first = seen_keys.setdefault(key, name)
            if first != name:
                report.problems.append(Problem(name, key, f"key is also in shard {first}"))
    return report


def format_report(report: VerifyReport, max_problems: int = 50) -> str:
    head = f"{report.dataset_dir}: {report.shards} shard(s), {report.samples} sample(s) checked"
    if report.ok:
        return f"{head}: OK"
    lines = [f"{head}: {len(report.problems)} problem(s)"]
    lines += [f"  {problem}" for problem in report.problems[:max_problems]]
    if len(report.problems) > max_problems:
        lines.append(f"  ... and {len(report.problems) - max_problems} more")
    return "\n".join(lines)


class _ShardCheck:
    """All checks of one shard, appending to a shared problem list."""

    def __init__(self, name: str, tar_path: Path, summary: ShardSummary | None, problems: list[Problem]):
        self.name = name
        self.tar_path = tar_path
        self.index_path = index_path_for(tar_path)
        self.summary = summary
        self.problems = problems

    def problem(self, reason: str, key: str | None = None) -> None:
        self.problems.append(Problem(self.name, key, reason))

    def run(self, *, decode: bool) -> list[str]:
        """Run every check; returns the keys of the shard's index (empty if it is unreadable)."""
        missing = [p for p in (self.tar_path, self.index_path) if not p.is_file()]
        for path in missing:
            self.problem(f"{path} is missing")
        if missing:
            return []
        if self.summary is not None:
            self._check_against_manifest()
        try:
            index = read_index(self.index_path)
        except ShardError as e:
            self.problem(str(e))
            return []
        keys = index["key"].to_pylist()
        rows = index.to_pylist()
        for row in rows:
            if row["frames_codec"] not in FRAMES_EXTENSIONS:
                self.problem(f"index names an unknown frames codec {row['frames_codec']!r}", row["key"])
                row["frames_codec"] = DEFAULT_FRAME_CODEC  # check the rest of the sample as far as possible
        self._check_keys(keys)
        if self.summary is not None:
            self._check_counts(index)
        members = self._parse_tar()
        self._check_layout(rows, members)
        self._check_crcs(rows)
        if decode:
            self._check_decode(rows)
        return keys

    def _check_against_manifest(self) -> None:
        summary = self.summary
        size = self.tar_path.stat().st_size
        if size != summary.bytes:
            self.problem(f"tar has {size} bytes, {MANIFEST_FILE} says {summary.bytes}")
        for path, want in ((self.tar_path, summary.tar_sha256), (self.index_path, summary.index_sha256)):
            got = sha256_file(path)
            if got != want:
                self.problem(f"{path.name}: sha256 {got} does not match {MANIFEST_FILE} ({want})")

    def _check_counts(self, index) -> None:
        if index.num_rows != self.summary.samples:
            self.problem(
                f"index has {index.num_rows} rows, {MANIFEST_FILE} says {self.summary.samples} samples"
            )
        tokens = int(pc.sum(index["tokens"]).as_py() or 0)
        if tokens != self.summary.tokens:
            self.problem(f"index tokens sum to {tokens}, {MANIFEST_FILE} says {self.summary.tokens}")

    def _check_keys(self, keys: list[str]) -> None:
        seen = set()
        for key in keys:
            try:
                validate_key(key)
            except InvalidKey as e:
                self.problem(f"index holds an invalid key: {e}")
            if key in seen:
                self.problem("key appears more than once in the index", key)
            seen.add(key)

    def _parse_tar(self) -> list[tuple[str, int, int]]:
        """(name, data offset, size) of every tar member, in order, as ``tarfile`` sees them."""
        members = []
        end = 0
        try:
            with tarfile.open(self.tar_path, "r:") as tar:
                for info in tar:
                    if not info.isreg():
                        self.problem(f"tar member {info.name!r} is not a regular file")
                    members.append((info.name, info.offset_data, info.size))
                    end = info.offset_data + info.size + (-info.size % BLOCK_SIZE)
        except (tarfile.TarError, EOFError, OSError) as e:
            self.problem(f"tar does not parse after {len(members)} member(s): {e}")
            return members
        self._check_archive_end(end)
        return members

    def _check_archive_end(self, end: int) -> None:
        size = self.tar_path.stat().st_size
        tail = size - end
        if tail < 2 * BLOCK_SIZE:
            self.problem(f"tar ends at byte {size} without the end-of-archive marker (truncated?)")
            return
        with open(self.tar_path, "rb") as f:
            f.seek(end)
            if f.read(min(tail, _ZERO_CHECK_LIMIT)).strip(b"\0") or tail > _ZERO_CHECK_LIMIT:
                self.problem(f"tar has {tail} unexpected bytes after its last member")

    def _check_layout(self, rows: list[dict], members: list[tuple[str, int, int]]) -> None:
        expected = [
            (member_name(row["key"], m, row["frames_codec"]), row[f"{m}_offset"], row[f"{m}_size"], row["key"])
            for row in rows
            for m in MEMBERS
        ]
        in_tar = {name: (offset, size) for name, offset, size in members}
        for name, offset, size, key in expected:
            if name not in in_tar:
                self.problem(f"member {name!r} is in the index but not in the tar", key)
            elif in_tar[name] != (offset, size):
                got_offset, got_size = in_tar[name]
                self.problem(
                    f"member {name!r}: index says offset {offset} size {size}, tar has offset {got_offset} size {got_size}",
                    key,
                )
        expected_names = {name for name, *_ in expected}
        for name, _, _ in members:
            if name not in expected_names:
                self.problem(f"tar member {name!r} is not in the index")
        if [e[0] for e in expected] != [m[0] for m in members] and set(expected_names) == set(in_tar):
            self.problem("tar members are not in index order")

    def _check_crcs(self, rows: list[dict]) -> None:
        size = self.tar_path.stat().st_size
        fd = os.open(self.tar_path, os.O_RDONLY)
        try:
            for row in rows:
                for member in MEMBERS:
                    name = member_name(row["key"], member, row["frames_codec"])
                    offset, length, want = (
                        row[f"{member}_offset"],
                        row[f"{member}_size"],
                        row[f"{member}_crc32"],
                    )
                    if offset < 0 or length < 0 or offset + length > size:
                        self.problem(
                            f"member {name!r} at [{offset}, {offset + length}) lies outside the tar ({size} bytes)",
                            row["key"],
                        )
                        continue
                    reader = RangeReader(fd, offset, length, f"{self.tar_path}: {name}")
                    reader.drain()
                    if reader.crc32 != want:
                        self.problem(
                            f"member {name!r}: crc32 {reader.crc32:08x} does not match the index ({want:08x})",
                            row["key"],
                        )
        finally:
            os.close(fd)

    def _check_decode(self, rows: list[dict]) -> None:
        try:
            shard = ShardReader(self.tar_path)
        except (ShardError, OSError) as e:
            self.problem(f"cannot open shard: {e}")
            return
        with shard:
            for row in rows:
                key = row["key"]
                try:
                    sample = shard.read(key)
                except ShardError as e:
                    self.problem(f"cannot read sample: {e}", key)
                    continue
                meta = {**sample.meta, "text_tokens": len(sample.text)}
                for field_name in TOKEN_FIELDS:
                    if meta.get(field_name, 0) != row[field_name]:
                        self.problem(
                            f"index {field_name}={row[field_name]} but the sample has {meta.get(field_name, 0)}",
                            key,
                        )
                if row["tokens"] != row["vision_tokens"] + row["text_tokens"]:
                    self.problem(f"index tokens={row['tokens']} is not vision_tokens + text_tokens", key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Verify a longshot dataset folder (shards, indexes, manifest)."
    )
    parser.add_argument("dataset_dir")
    parser.add_argument("--decode", action="store_true", help="also decode every sample in full")
    args = parser.parse_args(argv)
    report = verify_dataset(args.dataset_dir, decode=args.decode)
    print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
