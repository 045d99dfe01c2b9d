"""Damaged and hostile checkpoints, as a user meets them through the `longshot` command.

A run of 6 steps keeps checkpoints at steps 4 and 6. Damage to the newest (a flipped byte, a
truncated or deleted file) must be named, and the run resumes from step 4 with the losses of the
uninterrupted run; damage to all of them stops with one line and exit status 2. Files that would
run code when unpickled (in place of the RNG state, an old-style train state, Megatron's
.metadata or one of its stored objects) are refused, and the file their payload would create
never appears."""
import io
import json
import os
import pickle
import shutil

import pytest
import torch

from jobs.checkpoint_manifest import write_manifest
from jobs.status import status_text
from jobs.steps.train_metrics import read_metrics
from tests.jobs.test_train_resume import numbers, run

ARGS = ["--synthetic", "4", "--seq-len", "160", "--steps", "6", "--save-every", "2",
        "--keep", "2", "--lr", "2e-3", "--lr-warmup-steps", "1", "--workers", "0"]
NEWEST, PREVIOUS = "iter_0000006", "iter_0000004"


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears iff the pickle was trusted."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def payload(marker, pickler=torch.save) -> bytes:
    buf = io.BytesIO()
    pickler({"python": CreatesFile(marker)}, buf) if pickler is torch.save else buf.write(
        pickle.dumps(CreatesFile(marker)))
    return buf.getvalue()


def test_payloads_run_code_when_trusted(tmp_path):
    """The hostile files below are live: trusted loading would create their marker."""
    torch.load(io.BytesIO(payload(tmp_path / "a")), weights_only=False)
    pickle.loads(payload(tmp_path / "b", pickler=pickle.dumps))
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: its losses are the reference every resumed run must reproduce."""
    folder = tmp_path_factory.mktemp("straight") / "run"
    run("train", "--run", str(folder), *ARGS)
    assert sorted(p.name for p in (folder / "checkpoints").glob("iter_*")) == [PREVIOUS, NEWEST]
    return folder


def copy_of(straight, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(straight, folder)
    return folder


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"flipped byte": flip_byte, "truncated": truncate, "deleted": os.remove}


@pytest.mark.parametrize("damage, member", [("flipped byte", "__0_0.distcp"),
                                            ("flipped byte", "rng/rank_0.pt"),
                                            ("truncated", "train_state.json"),
                                            ("deleted", ".metadata")])
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_resumes(straight, tmp_path,
                                                                          damage, member):
    folder = copy_of(straight, tmp_path)
    DAMAGE[damage](folder / "checkpoints" / NEWEST / member)
    shown = status_text(folder)
    assert f"checkpoint {NEWEST}  damaged: {member}" in shown, shown
    assert f"checkpoint {PREVIOUS}  intact" in shown, shown

    out = run("resume", str(folder))
    lines = out.stdout.splitlines()
    named = [line for line in lines if NEWEST in line and "damaged" in line]
    assert len(named) == 1 and member in named[0], out.stdout[-2000:]
    assert f"resumed from {folder / 'checkpoints' / PREVIOUS}" in out.stdout
    assert numbers(read_metrics(folder)) == numbers(read_metrics(straight))
    assert f"checkpoint {NEWEST}  intact" in status_text(folder)  # written again by the resume


def test_every_checkpoint_damaged_stops_with_one_line_and_exit_2(straight, tmp_path):
    folder = copy_of(straight, tmp_path)
    flip_byte(folder / "checkpoints" / NEWEST / "__0_0.distcp")
    (folder / "checkpoints" / PREVIOUS / "manifest.json").unlink()
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    res = run("resume", str(folder), check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("longshot resume:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "no intact checkpoint" in errors[0]
    assert f"{NEWEST}: damaged: __0_0.distcp" in errors[0]
    assert f"{PREVIOUS}: damaged: manifest.json" in errors[0]
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before, "a refused resume changes nothing in the run folder"


def refused(res, marker, *names):
    text = res.stderr + res.stdout
    assert res.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    assert "refused to load" in res.stderr and all(n in res.stderr for n in names), res.stderr[-2000:]
    assert not marker.exists(), "the planted pickle ran"


def test_planted_rng_pickle_with_a_matching_manifest_is_refused(straight, tmp_path):
    """Checksums do not stop someone who rewrites the manifest too: loading itself must refuse."""
    folder = copy_of(straight, tmp_path)
    ckpt = folder / "checkpoints" / NEWEST
    marker = tmp_path / "pwned"
    (ckpt / "rng" / "rank_0.pt").write_bytes(payload(marker))
    (ckpt / "manifest.json").unlink()
    write_manifest(ckpt)
    refused(run("resume", str(folder), check=False), marker, "rng/rank_0.pt", "io.open")


def test_planted_pickle_as_an_old_style_train_state_is_refused(straight, tmp_path):
    """Checkpoints from before manifests (train_state.pt, no manifest) load unverified: the
    pickle in them is the one way in, and it is loaded weights_only."""
    folder = copy_of(straight, tmp_path)
    ckpt = folder / "checkpoints" / NEWEST
    marker = tmp_path / "pwned"
    (ckpt / "manifest.json").unlink()
    (ckpt / "train_state.json").unlink()
    (ckpt / "train_state.pt").write_bytes(payload(marker))
    res = run("resume", str(folder), check=False)
    assert "written before checkpoints had checksums" in res.stdout
    refused(res, marker, "train_state.pt")


def test_old_style_checkpoint_resumes_with_a_note(straight, tmp_path):
    """The layout written before manifests: pickled train state and numpy RNG arrays."""
    import numpy as np

    folder = copy_of(straight, tmp_path)
    ckpt = folder / "checkpoints" / NEWEST
    for name in ("manifest.json", "train_state.json"):
        (ckpt / name).unlink()
    (folder / "checkpoints" / "latest").write_text("4\n")  # resume from 4 to compare later steps
    ckpt = folder / "checkpoints" / PREVIOUS
    state = json.loads((ckpt / "train_state.json").read_text())
    (ckpt / "manifest.json").unlink()
    (ckpt / "train_state.json").unlink()
    torch.save(state, ckpt / "train_state.pt")
    rng = torch.load(ckpt / "rng" / "rank_0.pt", weights_only=True)
    key = rng["numpy"]["key"].numpy().astype(np.uint32)
    rng["numpy"] = ("MT19937", key, rng["numpy"]["pos"], rng["numpy"]["has_gauss"],
                    rng["numpy"]["gauss"])
    torch.save(rng, ckpt / "rng" / "rank_0.pt")
    out = run("resume", str(folder))
    assert f"{ckpt} was written before checkpoints had checksums" in out.stdout
    assert numbers(read_metrics(folder)) == numbers(read_metrics(straight))


def poison_stored_object(ckpt, key_prefix, marker):
    """Point one of Megatron's stored objects at a new .distcp file holding a hostile pickle."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    meta = pickle.loads((ckpt / ".metadata").read_bytes())
    index = next(i for i in meta.storage_data if i.fqn.startswith(key_prefix))
    data = payload(marker)
    (ckpt / "__9_0.distcp").write_bytes(data)
    meta.storage_data[index] = _StorageInfo("__9_0.distcp", 0, len(data))
    (ckpt / ".metadata").write_bytes(pickle.dumps(meta))


@pytest.mark.parametrize("where", [".metadata", "stored object"])
def test_init_from_a_hostile_checkpoint_is_refused(straight, tmp_path, where):
    source = tmp_path / "handed_over"
    shutil.copytree(straight / "checkpoints" / NEWEST, source)
    marker = tmp_path / "pwned"
    if where == ".metadata":
        (source / ".metadata").write_bytes(payload(marker, pickler=pickle.dumps))
    else:
        poison_stored_object(source, "language.output_layer._extra_state", marker)
    (source / "manifest.json").unlink()  # what a stranger hands over need not have one
    res = run("train", "--run", str(tmp_path / "target"), *ARGS, "--init-from", str(source),
              check=False)
    refused(res, marker, str(source), "io.open")
    assert f"note: {source} has no manifest.json" in res.stdout


def test_rng_file_restores_every_stream_without_pickled_objects(tmp_path):
    """The RNG file holds tensors and plain containers only, and still restores each stream,
    the cached Gaussians of Python and numpy included."""
    import random

    import numpy as np

    from jobs.checkpoint import rng_state, set_rng_state
    from jobs.safe_load import load_plain

    def draws():
        return (random.random(), random.gauss(0, 1), np.random.random(3).tolist(),
                np.random.standard_normal(), torch.rand(3).tolist())

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave a cached second Gaussian in each
    torch.save(rng_state(), tmp_path / "rank_0.pt")
    want = draws()
    draws()
    set_rng_state(load_plain(tmp_path / "rank_0.pt"))
    assert draws() == want


def test_two_ranks_agree_on_the_fallback_when_only_rank_1_file_is_damaged(tmp_path):
    """Ranks hash shares of the files; a damaged file of rank 1 makes both ranks resume from the
    previous checkpoint (a disagreement would hang or fail the collective load)."""
    two = ["--synthetic", "4", "--seq-len", "160", "--steps", "4", "--save-every", "2",
           "--workers", "0", "--nproc", "2"]
    straight2 = tmp_path / "straight"
    run("train", "--run", str(straight2), *two)
    folder = tmp_path / "damaged"
    shutil.copytree(straight2, folder)
    flip_byte(folder / "checkpoints" / "iter_0000004" / "rng" / "rank_1.pt")
    out = run("resume", str(folder), "--workers", "0", "--nproc", "2")
    assert out.stdout.count("iter_0000004: damaged: rng/rank_1.pt") == 1, out.stdout[-2000:]
    assert out.stdout.count(f"resumed from {folder / 'checkpoints' / 'iter_0000002'}") == 2
    assert numbers(read_metrics(folder)) == numbers(read_metrics(straight2))


def test_init_from_a_run_hashes_its_checkpoint_once(straight, monkeypatch):
    """`--init-from RUN` picks the newest intact checkpoint (which verifies it) and loads it
    without hashing it again: the files of a 30B checkpoint are read once, not twice."""
    import jobs.checkpoint as checkpoint
    from jobs.steps.train_loop import load_init_weights, model_config, stored_config
    from model.build import build_vlm, init_megatron

    hashed = []
    real_verify = checkpoint.verify
    monkeypatch.setattr(checkpoint, "verify", lambda folder: hashed.append(folder) or real_verify(folder))
    model = build_vlm(model_config(stored_config(straight)), init_megatron())
    weights = load_init_weights(straight, model.sharded_state_dict(), log=lambda msg: None)
    assert [p.name for p in map(type(straight), hashed)] == [NEWEST]
    model.load_state_dict(weights)


@pytest.mark.parametrize("damage, caught", [("truncated", True), ("deleted", True), ("flipped byte", False)])
def test_quick_status_compares_sizes_without_reading(straight, tmp_path, damage, caught):
    """`longshot status --quick`: a listing against the manifest's sizes. It names a truncated or
    deleted file; a flipped byte keeps the size, so only the full status (hashing) names it."""
    folder = copy_of(straight, tmp_path)
    DAMAGE[damage](folder / "checkpoints" / NEWEST / "__0_0.distcp")
    quick = status_text(folder, quick=True)
    assert f"checkpoint {PREVIOUS}  sizes match (not hashed)" in quick, quick
    if caught:
        assert f"checkpoint {NEWEST}  damaged: __0_0.distcp" in quick, quick
    else:
        assert f"checkpoint {NEWEST}  sizes match (not hashed)" in quick, quick
    assert f"checkpoint {NEWEST}  damaged: __0_0.distcp" in status_text(folder)
