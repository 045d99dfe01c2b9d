"""Starting the ranks of a multi-process command: torchrun on this machine, or Ray tasks.

`longshot train --nproc N ...` re-runs itself as N processes; each sees RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torch.distributed's env:// rendezvous expects. torchrun
is the default (one machine). With `--launcher ray` the ranks are Ray tasks on the cluster in
RAY_ADDRESS (or on a local Ray, on loopback, when it is unset); see `ray_ranks`.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys


class LaunchError(Exception):
    """The ranks could not be started (the cluster cannot hold them): printed as one line."""


def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def end_ranks() -> None:
    """A rank that finished its command leaves the process groups together with the others.

    Without this each rank's interpreter tears its groups down at exit on its own: rank 0 (which
    hosts the rendezvous store) may be gone while another rank's gloo threads still talk to it,
    and that rank then aborts ("terminate called without an active exception") after finishing
    its work, failing the whole command. A barrier first, so no rank leaves while another is still
    in a collective; then the groups are destroyed before interpreter shutdown."""
    import torch.distributed as dist

    if not (under_launcher() and dist.is_available() and dist.is_initialized()):
        return
    from megatron.core import parallel_state

    dist.barrier()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def torchrun(nproc: int, argv: list[str]) -> int:
    """Run `python -m jobs.cli argv` as `nproc` local ranks; returns the launcher's exit code."""
    from torch.distributed.run import get_args_parser, run

    # argv goes in after parsing: torchrun's parser would take the command's options as its own
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "jobs.cli"])
    args.training_script_args = list(argv)
    try:
        run(args)
    except Exception as exc:  # ChildFailedError: a rank failed; its error was printed
        print(f"longshot: a rank failed: {exc}", file=sys.stderr)
        return 1
    return 0


#: Seconds to wait for the cluster to free room for all ranks at once.
RAY_PLACEMENT_WAIT_S = 120.0
#: What ranks do not take from the launching command's environment: what belongs to one machine
#: or one process, and Ray's own settings (Ray gives each task its devices; see `ray_ranks`).
_NOT_FORWARDED = frozenset({"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                            "HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_"})


def ray_ranks(nproc: int, argv: list[str], address: str | None = None) -> int:
    """Run `python -m jobs.cli argv` as `nproc` Ray tasks, one per rank; returns the largest exit
    code (128 + N for a rank killed by signal N), after naming each rank that failed.

    All ranks must run at once (they rendezvous), so they are placed as one placement group of
    `nproc` bundles (PACK: as few nodes as fit): each bundle one GPU when the cluster has GPUs,
    else a share of its CPUs (at most one each, so 2 ranks fit on 2 cores). A cluster that cannot
    hold them all fails with a message (at once with too few GPUs, after RAY_PLACEMENT_WAIT_S when
    its resources stay busy), never queueing one rank behind another. A first,
    resource-free task in rank 0's bundle gives the rendezvous: rank 0's node address (127.0.0.1
    on a local Ray) and a port free there. LOCAL_RANK is 0 for every rank: a task given a GPU
    sees only that GPU (Ray sets CUDA_VISIBLE_DEVICES per task), so device 0 is the rank's own;
    without GPUs LOCAL_RANK selects nothing. Each rank runs in the launching command's folder with
    its environment (as torchrun's ranks do), less what `_NOT_FORWARDED` names. When a rank fails
    the others are stopped (they would wait on it in a collective), as torchrun does.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from jobs.executors import connect_ray

    started = connect_ray(address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    pg = None
    try:
        bundle = _rank_bundle(nproc, ray.cluster_resources())
        pg = placement_group([bundle] * nproc, strategy="PACK")
        if not _placed(pg):
            raise LaunchError(
                f"the Ray cluster cannot hold {nproc} ranks at once (each {bundle}) within "
                f"{RAY_PLACEMENT_WAIT_S:.0f} s; free now: {_brief(ray.available_resources())}")

        def in_bundle(i: int):
            return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

        master, port = ray.get(ray.remote(num_cpus=0)(_rendezvous_point)
                               .options(scheduling_strategy=in_bundle(0)).remote())
        rank_task = ray.remote(max_retries=0)(_run_rank)
        env = {k: v for k, v in os.environ.items()
               if k not in _NOT_FORWARDED and not k.startswith("RAY_")}
        env.update(WORLD_SIZE=str(nproc), LOCAL_RANK="0", MASTER_ADDR=master, MASTER_PORT=str(port))
        refs = [rank_task.options(name=f"rank{r}", num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                                  scheduling_strategy=in_bundle(r))
                .remote({**env, "RANK": str(r)}, list(argv), os.getcwd())
                for r in range(nproc)]
        return _wait_ranks(refs)
    except LaunchError as exc:
        print(f"longshot: {exc}", file=sys.stderr)
        return 1
    finally:
        if pg is not None:
            remove_placement_group(pg)
        if started:
            ray.shutdown()


def _rank_bundle(nproc: int, total: dict) -> dict:
    gpus = total.get("GPU", 0)
    if gpus and gpus < nproc:
        raise LaunchError(f"the Ray cluster has {gpus:g} GPUs for {nproc} ranks of one GPU each")
    cpus = max(0.01, min(1.0, math.floor(100 * total.get("CPU", 0) / nproc) / 100))
    return {"CPU": cpus, "GPU": 1} if gpus else {"CPU": cpus}


def _placed(pg) -> bool:
    import ray

    try:
        ray.get(pg.ready(), timeout=RAY_PLACEMENT_WAIT_S)
        return True
    except ray.exceptions.GetTimeoutError:
        return False


def _brief(resources: dict) -> str:
    return ", ".join(f"{k} {resources.get(k, 0):g}" for k in ("CPU", "GPU"))


def _rendezvous_point() -> tuple[str, int]:
    """Runs where rank 0 will run: that node's address and a port free on it now."""
    import ray

    host = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]


def _run_rank(env: dict, argv: list[str], cwd: str) -> int:
    """One rank, in a Ray worker: `python -m jobs.cli argv` as a child process; its exit status
    (negative: the signal that killed it). Cancelling the task kills the child."""
    import time

    # the worker's own variables stay beneath (CUDA_VISIBLE_DEVICES: the task's GPU)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv], env={**os.environ, **env},
                            cwd=cwd if os.path.isdir(cwd) else None)
    try:
        while proc.poll() is None:  # short sleeps, not one wait: a cancel lands between them
            time.sleep(0.2)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_ranks(refs: list) -> int:
    """Wait for every rank; on the first failure stop the rest. Prints what failed."""
    import ray

    rank_of = {ref: r for r, ref in enumerate(refs)}
    pending, codes, first = list(refs), {}, None
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        r = rank_of[done[0]]
        try:
            code = ray.get(done[0])
        except ray.exceptions.TaskCancelledError:
            print(f"longshot: rank {r} stopped after rank {first} failed", file=sys.stderr)
            continue
        except ray.exceptions.RayError as exc:  # its worker or node died
            print(f"longshot: rank {r} failed in Ray: {type(exc).__name__}: {exc}"[:2000], file=sys.stderr)
            code = 1
        if code:
            codes[r] = 128 - code if code < 0 else code
            print(f"longshot: rank {r} {_status_text(code)}", file=sys.stderr)
            if first is None:
                first = r
                _stop(pending)
    return max(codes.values(), default=0)


def _status_text(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _stop(refs: list, grace_s: float = 15.0) -> None:
    """Cancel the ranks still running; force (kill their workers) those that do not stop."""
    import ray

    for ref in refs:
        ray.cancel(ref)
    _, stuck = ray.wait(refs, num_returns=len(refs), timeout=grace_s) if refs else ([], [])
    for ref in stuck:
        ray.cancel(ref, force=True)


def launch(nproc: int, launcher: str, argv: list[str], ray_address: str | None = None) -> int:
    """``ray_address``: the Ray cluster to join (default $RAY_ADDRESS, else a local Ray)."""
    # one thread per rank unless told otherwise, as torchrun sets it for several ranks
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if launcher == "torchrun":
        return torchrun(nproc, argv)
    if launcher == "ray":
        return ray_ranks(nproc, argv, ray_address)
    raise ValueError(f"unknown launcher {launcher!r}: torchrun or ray")
