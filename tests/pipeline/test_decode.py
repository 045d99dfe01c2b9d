import numpy as np
import pytest

from pipeline.budget import BudgetConfig, plan_video
from pipeline.decode import frame_timestamps, iter_frame_windows
from pipeline.errors import DecodeError
from pipeline.probe import probe_video
from pipeline.sample_videos import sample_clip

from .ffmpeg_reference import ffmpeg_decode


def test_windows_equal_ffmpeg_at_the_planned_indices_and_size():
    clip = sample_clip("bigbuckbunny.mp4")
    plan = plan_video(probe_video(clip), text_tokens=30)
    (seg,) = plan.segments
    windows = list(iter_frame_windows(clip, seg.frame_indices, plan.height, plan.width, window=5))
    assert [w.shape for w in windows] == [(5, 336, 588, 3), (5, 336, 588, 3), (2, 336, 588, 3)]
    assert all(w.dtype == np.uint8 for w in windows)
    got = np.concatenate(windows)
    ref = ffmpeg_decode(clip, seg.frame_indices, plan.height, plan.width)
    assert np.array_equal(got, ref.frames)
    assert np.allclose(frame_timestamps(clip, seg.frame_indices), ref.times, atol=1e-3)
    assert np.array_equal(got[-1], got[-2])  # the padded frame repeats the last one


def test_split_segments_across_many_keyframes(bikes_minute):
    info = probe_video(bikes_minute)
    plan = plan_video(info, 10, BudgetConfig(max_seq_tokens=100))
    assert len(plan.segments) > 2
    for seg in plan.segments[:: max(1, len(plan.segments) // 4)]:
        got = np.concatenate(list(iter_frame_windows(bikes_minute, seg.frame_indices, plan.height, plan.width, 7)))
        assert np.array_equal(got, ffmpeg_decode(bikes_minute, seg.frame_indices, plan.height, plan.width).frames)


def test_default_plan_over_many_gops_equals_ffmpeg(bikes_minute):
    """2 fps over a minute of 1-3 s GOPs: many runs, B-frames skipped between wanted frames."""
    plan = plan_video(probe_video(bikes_minute), text_tokens=30)
    (seg,) = plan.segments
    got = np.concatenate(list(iter_frame_windows(bikes_minute, seg.frame_indices, plan.height, plan.width)))
    assert np.array_equal(got, ffmpeg_decode(bikes_minute, seg.frame_indices, plan.height, plan.width).frames)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_memory_is_bounded_by_the_window_on_a_ten_minute_video(long_tiny_video):
    info = probe_video(long_tiny_video)
    assert info.duration_s >= 600
    every_frame = range(info.n_frames)  # 18,000 frames, 1.2 GB of RGB at 140x168
    rss, total = [], 0
    for window in iter_frame_windows(long_tiny_video, every_frame, 140, 168, window=32):
        assert window.shape[1:] == (140, 168, 3) and len(window) <= 32
        total += window.nbytes
        rss.append(rss_mib())
    assert total == info.n_frames * 140 * 168 * 3
    growth = max(rss) - rss[0]
    assert growth < 64, f"RSS grew {growth:.0f} MiB while decoding {total / 2**20:.0f} MiB of frames"


def test_decode_errors(bad_inputs):
    clip = sample_clip("bikes.mp4")
    with pytest.raises(DecodeError, match="frame index out of range"):
        list(iter_frame_windows(clip, [0, 250], 84, 168))
    with pytest.raises(DecodeError) as info:
        list(iter_frame_windows(bad_inputs["truncated"], [0], 84, 168, id="t1"))
    assert info.value.as_row() == {"id": "t1", "input": str(bad_inputs["truncated"]), "stage": "decode",
                                   "reason": "not a video"}
    with pytest.raises(ValueError):
        list(iter_frame_windows(clip, [5, 4], 84, 168))
