"""`--launcher ray`: the ranks run as Ray tasks, with real gloo, and train exactly as torchrun's do;
a rank that dies makes the command fail, naming it, and the other ranks are stopped."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.steps.train_metrics import read_metrics
from tests.jobs.test_ray_executor import ray_head  # noqa: F401 - a fixture: `ray start --head` on loopback
from tests.parallel.test_train_layout import ARGS, ENV, numbers

# no token auth (as the head fixture); every line of every rank shown (not merged as repeats)
RAY_ENV = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"} | {
    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


def train(run: Path, *args, env=ENV) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--run", str(run), "--nproc", "2",
                          *ARGS, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_ray_ranks_train_as_torchrun_ranks_do(tmp_path, ray_head):  # noqa: F811
    train(tmp_path / "torchrun")
    out = train(tmp_path / "ray", "--launcher", "ray", "--ray-address", ray_head, env=RAY_ENV)
    assert "(rank1 pid=" in out.stdout + out.stderr, "the ranks' output comes from the Ray tasks"
    want = numbers(read_metrics(tmp_path / "torchrun"))
    assert [w[0] for w in want] == [1, 2, 3, 4]
    assert numbers(read_metrics(tmp_path / "ray")) == want


def _rank_processes(run: Path) -> dict[int, tuple[int, dict]]:
    """The ranks of the run in `run` now alive: rank -> (pid, environment)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode().split("\0")
                       if "=" in kv)
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):  # not a process, or gone meanwhile
            continue
        if str(run).encode() in cmd and "RANK" in env and state != "Z":
            found[int(env["RANK"])] = (int(proc.name), env)
    return found


def test_a_killed_rank_fails_the_command_and_is_named(tmp_path):
    """A local Ray (the launcher starts it, on loopback); rank 1 is killed as soon as it runs,
    while rank 0 waits for it in the rendezvous: the launcher stops rank 0 and reports rank 1."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jobs.cli", "train", "--run", str(run), "--nproc", "2", *ARGS,
           "--steps", "1000", "--launcher", "ray"]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as o, err.open("w") as e:
        launcher = subprocess.Popen(cmd, env=RAY_ENV, stdout=o, stderr=e)
    try:
        deadline = time.monotonic() + 180
        while 1 not in (ranks := _rank_processes(run)):
            assert launcher.poll() is None, f"the launcher ended first:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "rank 1 did not start"
            time.sleep(0.1)
        pid, env = ranks[1]
        assert (env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("2", "0", "127.0.0.1")
        os.kill(pid, signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    err = err.read_text()
    assert launcher.returncode == 128 + signal.SIGKILL, f"exit {launcher.returncode}\n{err[-3000:]}"
    assert "rank 1 was killed by SIGKILL" in err
    # stopped by the launcher, or failed by itself when rank 1 went away
    assert re.search(r"rank 0 (stopped after rank 1 failed|exited with code [1-9])", err), err[-3000:]
    assert not _rank_processes(run), "no rank outlives the launcher"
