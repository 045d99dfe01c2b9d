"""Shared real-video fixtures for the pipeline tests (made once per session; all by stream copy)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline.sample_videos import make_bad_inputs, remux_loop, sample_clip, sample_clips
from pipeline.text import train_tokenizer


@pytest.fixture(scope="session")
def clips() -> list[Path]:
    return sample_clips()


@pytest.fixture(scope="session")
def shared_dir():
    """A session folder that an unprivileged process can traverse (see ``helpers.probe_as_worker``)."""
    folder = Path(tempfile.mkdtemp(prefix="longshot-pipeline-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def bad_inputs(shared_dir) -> dict[str, Path]:
    return make_bad_inputs(shared_dir / "bad")


@pytest.fixture(scope="session")
def long_tiny_video(shared_dir) -> Path:
    """carphone_distorted (176x144, H.264, one keyframe per 4 s clip) looped to 10 minutes: 18,000 frames."""
    return remux_loop(sample_clip("carphone_distorted.mp4"), shared_dir / "carphone_10min.mp4", 600)


@pytest.fixture(scope="session")
def bikes_minute(shared_dir) -> Path:
    """bikes (640x272, keyframes every 1-3 s) looped to a minute: several GOPs per window."""
    return remux_loop(sample_clip("bikes.mp4"), shared_dir / "bikes_1min.mp4", 60)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    texts = [
        "A red car drives past a row of trees.",
        "Two people ride bicycles along a sunny street, then turn left.",
        "What happens in the video? Describe the scene in detail.",
        "The rabbit wakes up, stretches and walks out of its burrow.",
    ] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=400)
