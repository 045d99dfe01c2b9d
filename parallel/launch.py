"""Starting the ranks of a multi-process command: torchrun on this machine, or Ray tasks.

`longshot train --nproc N ...` re-runs itself as N processes; each sees RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torch.distributed's env:// rendezvous expects. torchrun
is the default (one machine). With Ray, one task per rank (each asking for a GPU when the
cluster has them) runs the same command with those variables set; rank 0's node address is
the rendezvous.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun(nproc: int, argv: list[str]) -> int:
    """Run `python -m jobs.cli argv` as `nproc` local ranks; returns the launcher's exit code."""
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # argv goes in after parsing: torchrun's parser would take the command's options as its own
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "jobs.cli"])
    args.training_script_args = list(argv)
    try:
        run(args)
    except Exception as exc:  # ChildFailedError: a rank failed; its error was printed
        print(f"longshot: a rank failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def ray_ranks(nproc: int, argv: list[str]) -> int:
    """Run the command as `nproc` Ray tasks; returns the largest exit code."""
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= nproc else 0

    @ray.remote(num_gpus=gpus)
    def rank_task(rank: int, master: str, port: int) -> int:
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": "0",
               "MASTER_ADDR": master, "MASTER_PORT": str(port)}
        return subprocess.call([sys.executable, "-m", "jobs.cli", *argv], env=env)

    master = ray.util.get_node_ip_address()
    port = _free_port()
    codes = ray.get([rank_task.remote(r, master, port) for r in range(nproc)])
    return max(codes)


def launch(nproc: int, launcher: str, argv: list[str]) -> int:
    if launcher == "torchrun":
        return torchrun(nproc, argv)
    if launcher == "ray":
        return ray_ranks(nproc, argv)
    raise ValueError(f"unknown launcher {launcher!r}: torchrun or ray")
