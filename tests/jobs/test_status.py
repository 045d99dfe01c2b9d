"""`longshot status`: what a user sees about a folder's jobs, from their real state files."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from jobs.runtime import RetryPolicy, run_job
from jobs.status import status_text
from tests.jobs.sample_jobs import WriteFilesJob

REPO = Path(__file__).resolve().parents[2]


def test_status_names_failed_units_their_attempts_and_reason(tmp_path):
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "u0002").touch()
    out = tmp_path / "out"
    run_job(WriteFilesJob({"units": 5, "seed": 1, "fail_dir": str(fail_dir)}), out,
            retry=RetryPolicy(max_attempts=2, backoff_s=0.01), progress=False)
    text = status_text(out)
    assert "write-files" in text and "incomplete" in text
    assert "units 4/5 done, 1 failed, 0 pending" in text
    assert "failed u0002 after 2 attempt(s)" in text and "told to fail" in text


def test_status_shows_a_live_holder_of_the_folder(tmp_path):
    run_job(WriteFilesJob({"units": 2, "seed": 1}), tmp_path, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom jobs.lock import FolderLock\n"
         "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
         str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"[running: pid {holder.pid}]" in status_text(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert "running" not in status_text(tmp_path)
    assert "complete" in status_text(tmp_path)


def test_status_of_a_training_run_reports_checkpoint_and_last_loss(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--run", str(run), "--synthetic", "2",
                    "--seq-len", "160", "--steps", "3", "--save-every", "2", "--workers", "0"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    text = status_text(tmp_path)
    assert "train" in text and "complete" in text
    assert "checkpoint at step 3 of 3" in text and "last logged step 3: loss" in text
