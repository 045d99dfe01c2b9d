"""The train job in real subprocesses: SIGKILL at a random step, resume, and every later step's
loss equals an uninterrupted run's, bit for bit; metrics hold each step once; a changed config
is refused without --force."""
import json
import os
import random
import shutil
import subprocess
import sys

from jobs.checkpoint import Checkpoints
from jobs.status import status_text
from jobs.steps.train_metrics import read_metrics
from tests.jobs.helpers import kill_when

STEPS = 8
# DSA with a 3-step indexer warm-up: the kill may land in either stage, or across the switch.
ARGS = ["--synthetic", "4", "--seq-len", "160", "--steps", str(STEPS), "--save-every", "2",
        "--attention", "dsa", "--dsa-warmup-steps", "3", "--dsa-topk", "16", "--lr", "2e-3",
        "--lr-warmup-steps", "1", "--workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def longshot(*args, **kw):
    return [sys.executable, "-m", "jobs.cli", *args]


def run(*args, check=True):
    res = subprocess.run(longshot(*args), env=ENV, capture_output=True, text=True, timeout=300, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def numbers(records):
    return [(r["step"], r["loss"], r["ce"], r["aux"], r["indexer"], r["grad_norm"], r["lr"])
            for r in records]


def test_sigkill_then_resume_gives_identical_losses(tmp_path):
    straight = tmp_path / "straight"
    run("train", "--run", str(straight), *ARGS)
    want = numbers(read_metrics(straight))
    assert [w[0] for w in want] == list(range(1, STEPS + 1))
    assert want[-1][2] < want[0][2]  # the loss goes down
    # --keep 2 prunes older checkpoints, but never the one that ends the warm-up (step 3)
    assert Checkpoints(straight).steps() == [3, 6, 8]

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(3, 6)  # a random step: metrics of a later step exist
    kill_when(longshot("train", "--run", str(killed), *ARGS), ENV,
              lambda: len(read_metrics(killed)) >= kill_after, timeout=240)
    latest = int((killed / "checkpoints" / "latest").read_text())
    assert latest < STEPS
    out = run("resume", str(killed))
    assert "resumed from" in out.stdout
    got = numbers(read_metrics(killed))
    assert [g[0] for g in got] == list(range(1, STEPS + 1)), "every step logged exactly once"
    assert got == want, f"killed after step {kill_after}, resumed from {latest}"


def test_changed_config_is_refused_unless_forced(tmp_path):
    run_dir = tmp_path / "run"
    short = ["--synthetic", "2", "--seq-len", "96", "--steps", "2", "--workers", "0"]
    run("train", "--run", str(run_dir), *short)
    res = run("train", "--run", str(run_dir), *short, "--lr", "1e-2", check=False)
    assert res.returncode == 4 and "--force" in res.stderr
    assert len(read_metrics(run_dir)) == 2
    res = run("train", "--run", str(run_dir), *short, "--lr", "1e-2", "--force")
    stored = json.loads((run_dir / ".longshot" / "train" / "job.json").read_text())
    assert stored["config"]["optim"] == {"lr": 1e-2}
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_init_from_keeps_the_loaded_weights_after_the_first_update(tmp_path):
    """bf16 keeps fp32 master weights in the optimizer; --init-from must refresh them, or the
    first update silently puts the freshly initialised weights back (loss jumps to ln(vocab))."""
    source = tmp_path / "source"
    common = ["--synthetic", "4", "--seq-len", "512", "--dtype", "bf16", "--workers", "0"]
    run("train", "--run", str(source), *common, "--steps", "6", "--lr", "3e-3", "--save-every", "6")
    target = tmp_path / "target"
    run("train", "--run", str(target), *common, "--steps", "3", "--lr", "1e-6", "--min-lr", "0",
        "--lr-warmup-steps", "1", "--init-from", str(source / "checkpoints" / "iter_0000006"))
    trained = [r["ce"] for r in read_metrics(source)]
    continued = [r["ce"] for r in read_metrics(target)]
    assert continued[0] < trained[0] - 0.2, "the loaded weights must be in use at step 1"
    # a learning rate of 1e-6 barely moves the weights: later steps stay where step 1 was
    assert max(abs(c - continued[0]) for c in continued[1:]) < 0.15, continued


def test_a_sparse_stage_starts_from_the_kept_warmup_checkpoint(tmp_path):
    """The checkpoint that ends a warm-up survives --keep 1, and a run that starts sparse from it
    (--init-from, no warm-up) computes the loss the warmed-up run computed at its first sparse
    step: same backbone, same trained indexer, so the same selection. One pack, so both steps
    read the same tokens."""
    common = ["--synthetic", "1", "--seq-len", "160", "--attention", "dsa", "--dsa-topk", "16",
              "--lr", "2e-3", "--lr-warmup-steps", "1", "--workers", "0"]
    warmed = tmp_path / "warmed"
    run("train", "--run", str(warmed), *common, "--steps", "4", "--dsa-warmup-steps", "2",
        "--save-every", "4", "--keep", "1")
    assert Checkpoints(warmed).steps() == [2, 4]
    shown = status_text(warmed)
    assert "iter_0000002  intact  (end of the DSA warm-up" in shown and "iter_0000004  intact\n" in shown + "\n", shown
    sparse = tmp_path / "sparse"
    run("train", "--run", str(sparse), *common, "--steps", "1", "--dsa-warmup-steps", "0",
        "--init-from", str(Checkpoints(warmed).path(2)))
    first_sparse = read_metrics(warmed)[2]
    assert first_sparse["stage"] == "sparse"
    got = read_metrics(sparse)[0]
    assert got["stage"] == "sparse"
    assert abs(got["ce"] - first_sparse["ce"]) < 1e-5 and abs(got["indexer"] - first_sparse["indexer"]) < 1e-5, \
        (got, first_sparse)
    # the warm-up moved the indexer: a run from the checkpoint before it selects differently
    untrained = tmp_path / "untrained"
    run("train", "--run", str(untrained), *common, "--steps", "1", "--dsa-warmup-steps", "0")
    assert abs(read_metrics(untrained)[0]["indexer"] - first_sparse["indexer"]) > 1e-4


def test_resume_on_another_number_of_ranks_reshards_and_trains_on(tmp_path):
    """Saved by two data-parallel ranks, resumed by one: Megatron's checkpoint is resharded
    (the distributed optimizer's shards included), the note says so, and training continues
    from the saved weights, not from a fresh model."""
    args = ["--synthetic", "4", "--seq-len", "160", "--steps", "6", "--save-every", "3", "--lr", "3e-3",
            "--lr-warmup-steps", "1", "--workers", "0"]
    two = tmp_path / "two"
    run("train", "--run", str(two), *args, "--nproc", "2")
    (two / "checkpoints" / "latest").write_text("3")
    shutil.rmtree(two / "checkpoints" / "iter_0000006")
    fresh = tmp_path / "fresh"
    run("train", "--run", str(fresh), *args, "--steps", "1")
    out = run("resume", str(two))
    assert "saved by 2 ranks and is loaded by 1" in out.stdout, out.stdout[-2000:]
    got = read_metrics(two)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    untrained = read_metrics(fresh)[0]["ce"]
    # the resumed steps start from the trained weights: well below a fresh model's loss
    assert got[3]["ce"] < untrained - 0.3, (got[3]["ce"], untrained)


def test_token_merge_reaches_the_attention_config_and_bad_values_are_refused(tmp_path):
    """--dsa-token-merge and --dsa-token-merge-backward are stored with the run and become the DSA
    layers' token_merge and token_merge_backward; a value the kernels cannot take (one bit per query
    of a group, 1 to 16) is refused before any work."""
    from jobs.steps.train_loop import model_config, stored_config
    from model.attention import CoreChoice
    from model.training import configure_core

    short = ["--synthetic", "2", "--seq-len", "96", "--steps", "1", "--workers", "0", "--attention", "dsa",
             "--dsa-granularity", "token"]
    bad = run("train", "--run", str(tmp_path / "bad"), *short, "--dsa-token-merge", "17", check=False)
    assert bad.returncode == 2 and "--dsa-token-merge 17" in bad.stderr
    bad_b = run("train", "--run", str(tmp_path / "bad"), *short, "--dsa-token-merge-backward", "0", check=False)
    assert bad_b.returncode == 2 and "--dsa-token-merge-backward 0" in bad_b.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()
    run("train", "--run", str(tmp_path / "ok"), *short, "--dsa-token-merge", "4", "--dsa-token-merge-backward", "8")
    cfg = stored_config(tmp_path / "ok")
    core = CoreChoice()
    configure_core(core, "sparse", model_config(cfg).lm.dsa, False)
    assert (core.dsa.granularity, core.dsa.token_merge, core.dsa.token_merge_backward) == ("token", 4, 8)


def test_dsa_warmup_lr_is_the_peak_of_the_indexer_warmup_only(tmp_path):
    """--dsa-warmup-lr sets the LR of the indexer warm-up and of nothing else: against the same run
    without it, the warm-up steps run at a higher LR, their LM cross entropy is the same bit for bit
    (the LM is frozen there) while the indexer's loss moves, and the sparse steps keep --lr's
    schedule. A value that is not a positive LR is refused before any work."""
    short = ["--synthetic", "2", "--seq-len", "96", "--steps", "6", "--workers", "0", "--attention", "dsa",
             "--dsa-warmup-steps", "4", "--dsa-topk", "16", "--lr", "1e-3", "--lr-warmup-steps", "1"]
    run("train", "--run", str(tmp_path / "a"), *short)
    run("train", "--run", str(tmp_path / "b"), *short, "--dsa-warmup-lr", "8e-3")
    pairs = list(zip(read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b"), strict=True))
    warm = [(x, y) for x, y in pairs if x["stage"] == "warmup"]
    sparse = [(x, y) for x, y in pairs if x["stage"] == "sparse"]
    assert len(warm) == 4 and len(sparse) == 2
    assert all(y["lr"] > x["lr"] for x, y in warm if x["lr"] > 0)
    assert any(x["lr"] > 0 for x, _ in warm)
    assert [x["ce"] for x, _ in warm] == [y["ce"] for _, y in warm]
    assert any(x["indexer"] != y["indexer"] for x, y in warm)
    assert [x["lr"] for x, _ in sparse] == [y["lr"] for _, y in sparse]
    bad = run("train", "--run", str(tmp_path / "bad"), *short, "--dsa-warmup-lr", "0", check=False)
    assert bad.returncode == 2 and "--dsa-warmup-lr 0" in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_dsa_block_rule_picks_how_blocks_select(tmp_path):
    """--dsa-block-rule sets how a block of queries scores keys in sparse training: the default run
    and one that names the default rule are the same run bit for bit, a different rule selects
    other keys and so trains to other losses, and an unknown rule is refused by name before any
    work."""
    short = ["--synthetic", "2", "--seq-len", "96", "--steps", "2", "--workers", "0", "--attention", "dsa",
             "--dsa-topk", "4", "--lr", "1e-3", "--lr-warmup-steps", "1"]
    ce = {}
    for name, extra in {"default": [], "max+coarse2": ["--dsa-block-rule", "max+coarse2"],
                        "pooled": ["--dsa-block-rule", "pooled"]}.items():
        run("train", "--run", str(tmp_path / name.replace("+", "_")), *short, *extra)
        ce[name] = [r["ce"] for r in read_metrics(tmp_path / name.replace("+", "_"))]
    assert ce["default"] == ce["max+coarse2"]
    assert ce["pooled"] != ce["default"]
    bad = run("train", "--run", str(tmp_path / "bad"), *short, "--dsa-block-rule", "mean", check=False)
    assert bad.returncode == 2 and "'mean'" in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_run_made_before_a_config_field_existed_resumes(tmp_path):
    """A run whose stored config predates a TrainConfig field (written by an older longshot, so
    without it) is the same run when the field holds its default: killed, it resumes where it
    stopped and its stored config is brought up to date. A value that differs is still refused,
    by name."""
    from jobs.job import config_hash

    short = ["--synthetic", "2", "--seq-len", "96", "--workers", "0", "--save-every", "2", "--steps", "6"]
    kill_when(longshot("train", "--run", str(tmp_path), *short), ENV, lambda: len(read_metrics(tmp_path)) >= 3,
              timeout=240)
    meta_path = tmp_path / ".longshot" / "train" / "job.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["dsa_warmup_lr"]  # as the version before the field wrote it
    meta["config_hash"] = config_hash(meta["config"])
    meta_path.write_text(json.dumps(meta))
    res = run("train", "--run", str(tmp_path), *short)
    assert "resumed from" in res.stdout, res.stdout[-2000:]
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 7))
    assert "dsa_warmup_lr" in json.loads(meta_path.read_text())["config"]
    bad = run("train", "--run", str(tmp_path), *short, "--attention", "dsa", "--dsa-warmup-lr", "1e-3",
              check=False)
    assert bad.returncode != 0 and "dsa_warmup_lr" in bad.stderr and "attention" in bad.stderr


def test_dsa_dense_layers_reach_the_model_and_bad_values_are_refused(tmp_path):
    """--dsa-dense-layers is stored with the run and becomes the model's dense_layers (the rest
    of the layers still train their indexers in warm-up); a layer the preset lacks, or a value
    that is not a list of indices, is refused by name before any work."""
    from jobs.steps.train_loop import model_config, stored_config

    short = ["--synthetic", "2", "--seq-len", "96", "--steps", "2", "--workers", "0", "--attention", "dsa",
             "--dsa-warmup-steps", "1", "--dsa-topk", "4"]
    for value, says in (("2", "dense_layers [2]: the LM has 2 layers"), ("first", "--dsa-dense-layers 'first'")):
        bad = run("train", "--run", str(tmp_path / "bad"), *short, "--dsa-dense-layers", value, check=False)
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr[-2000:]
        assert not (tmp_path / "bad" / "checkpoints").exists()
    run("train", "--run", str(tmp_path / "ok"), *short, "--dsa-dense-layers", "0")
    assert model_config(stored_config(tmp_path / "ok")).lm.dsa.dense_layers == (0,)
    assert all(r["indexer"] > 0 for r in read_metrics(tmp_path / "ok"))
