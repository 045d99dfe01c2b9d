"""The job runtime: resume after SIGKILL, retries, config refusal, the folder lock."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs.atomic import sha256_file
from jobs.ledger import DONE, FAILED, Ledger
from jobs.lock import FolderLock, FolderLocked
from jobs.runtime import ConfigMismatch, RetryPolicy, job_state_dir, run_job
from tests.jobs.helpers import output_files
from tests.jobs.sample_jobs import WriteFilesJob, unit_bytes

REPO = Path(__file__).resolve().parents[2]


def _spawn(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.jobs.sample_jobs", str(out), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ledger_lines(out: Path) -> list[dict]:
    path = job_state_dir(out, WriteFilesJob.name) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_at_random_moments_then_resume_gives_identical_output(tmp_path, seed):
    rng = random.Random(seed * 7717 + int(time.time()))
    args = ["--units", "30", "--seed", str(seed), "--sleep", "0.02"]
    reference = tmp_path / "reference"
    start = time.monotonic()
    assert _spawn(reference, *args).wait(timeout=120) == 0
    duration = time.monotonic() - start  # kill moments fall inside a whole run, start-up included

    out = tmp_path / "killed"
    kills = 0
    for attempt in range(4):  # several kills per seed, each at a random moment
        proc = _spawn(out, *args)
        # later runs skip finished units, so they are shorter: aim earlier
        time.sleep(rng.uniform(0.02, 0.9) * duration / (attempt + 1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    final = _spawn(out, *args)
    log = final.communicate(timeout=120)[0]
    assert final.returncode == 0, log
    assert kills >= 1

    assert output_files(out) == output_files(reference)
    lines = _ledger_lines(out)
    done_per_unit = Counter(r["unit"] for r in lines if r["state"] == DONE)
    assert set(done_per_unit) == {f"u{i:04d}" for i in range(30)} | {"__finalize__"}
    assert max(done_per_unit.values()) == 1, "a unit was committed twice"
    # The ledger agrees with the files: every recorded output exists with its checksum,
    # and every output file is recorded by exactly one unit.
    recorded = {}
    for rec in Ledger.read(job_state_dir(out, WriteFilesJob.name) / "ledger.jsonl").values():
        assert rec.state == DONE
        for rel, digest in rec.outputs.items():
            assert sha256_file(out / rel) == digest
            assert rel not in recorded
            recorded[rel] = rec.unit
    assert set(recorded) == set(output_files(out))


def test_torn_ledger_line_is_dropped_and_rerun_completes(tmp_path):
    job = WriteFilesJob({"units": 5, "seed": 9})
    run_job(job, tmp_path, progress=False)
    ledger = job_state_dir(tmp_path, job.name) / "ledger.jsonl"
    raw = ledger.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    ledger.write_bytes(raw[: last_start + 10])  # kill in the middle of the last append
    report = run_job(WriteFilesJob({"units": 5, "seed": 9}), tmp_path, progress=False)
    assert report.ok
    assert ledger.read_bytes().endswith(b"\n")
    assert json.loads((tmp_path / "manifest.json").read_text())["bytes"] == sum(
        len(unit_bytes(9, i)) for i in range(5))


def test_done_unit_whose_output_was_damaged_is_redone(tmp_path):
    cfg = {"units": 4, "seed": 5}
    run_job(WriteFilesJob(cfg), tmp_path, progress=False)
    victim = tmp_path / "parts" / "u0002.bin"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    untouched = (tmp_path / "parts" / "u0001.bin").stat().st_ino
    report = run_job(WriteFilesJob(cfg), tmp_path, progress=False)
    assert report.ran == 1 and report.skipped == 3
    assert any("u0002" in item for item in report.redone_bad_outputs)
    assert victim.read_bytes() == unit_bytes(5, 2)
    assert (tmp_path / "parts" / "u0001.bin").stat().st_ino == untouched


def test_failing_unit_is_retried_recorded_and_others_finish(tmp_path):
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "u0003").touch()
    out = tmp_path / "out"
    cfg = {"units": 6, "seed": 3, "fail_dir": str(fail_dir)}
    report = run_job(WriteFilesJob(cfg), out, retry=RetryPolicy(max_attempts=3, backoff_s=0.01),
                     progress=False)
    assert list(report.failed) == ["u0003"]
    assert "told to fail" in report.failed["u0003"]
    assert report.exit_code == 3
    assert not (out / "manifest.json").exists(), "finalize must wait for every unit"
    attempts = [r for r in _ledger_lines(out) if r["unit"] == "u0003"]
    assert [r["state"] for r in attempts] == [FAILED] * 3
    assert all("told to fail" in r["error"] for r in attempts)
    assert len(list((out / "parts").glob("*.bin"))) == 5

    (fail_dir / "u0003").unlink()  # the cause is fixed: only the failed unit runs again
    inode = (out / "parts" / "u0000.bin").stat().st_ino
    report = run_job(WriteFilesJob(cfg), out, progress=False)
    assert report.ok and report.ran == 1 and report.skipped == 5
    assert (out / "parts" / "u0000.bin").stat().st_ino == inode
    assert (out / "manifest.json").exists()


def test_cli_exit_status_for_failed_units(tmp_path):
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "u0001").touch()
    proc = _spawn(tmp_path / "out", "--units", "3", "--fail-dir", str(fail_dir))
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 3, log
    assert "FAILED u0001" in log and "run the same command again" in log


def test_changed_config_is_refused_and_force_starts_over(tmp_path):
    run_job(WriteFilesJob({"units": 3, "seed": 1}), tmp_path, progress=False)
    before = output_files(tmp_path)
    with pytest.raises(ConfigMismatch, match="--force") as err:
        run_job(WriteFilesJob({"units": 2, "seed": 2}), tmp_path, progress=False)
    assert "seed" in str(err.value) and "units" in str(err.value)
    assert output_files(tmp_path) == before, "a refused run must not touch finished work"

    report = run_job(WriteFilesJob({"units": 2, "seed": 2}), tmp_path, force=True, progress=False)
    assert report.ok and report.ran == 2
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.bin")) == ["u0000.bin", "u0001.bin"]
    assert (tmp_path / "parts" / "u0000.bin").read_bytes() == unit_bytes(2, 0)


_HOLD_LOCK = """
import sys, time
from jobs.lock import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_lock_refuses_a_second_run_and_is_freed_by_sigkill(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        assert FolderLock(tmp_path).is_held_by_other()
        with pytest.raises(FolderLocked, match=f"pid {holder.pid}"):
            run_job(WriteFilesJob({"units": 2, "seed": 0}), tmp_path, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not FolderLock(tmp_path).is_held_by_other()
    report = run_job(WriteFilesJob({"units": 2, "seed": 0}), tmp_path, progress=False)
    assert report.ok
    assert report.took_over_lock_from["pid"] == holder.pid
