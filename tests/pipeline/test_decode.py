import decord
import numpy as np
import pytest

from pipeline.budget import BudgetConfig, plan_video
from pipeline.decode import iter_frame_windows
from pipeline.errors import DecodeError
from pipeline.gop_bridges import bridged_request
from pipeline.probe import probe_video
from pipeline.sample_videos import sample_clip


def decord_frames(path, indices, height, width) -> np.ndarray:
    return decord.VideoReader(str(path), width=width, height=height).get_batch(indices).asnumpy()


def test_windows_equal_decord_get_batch_at_the_planned_indices_and_size():
    clip = sample_clip("bigbuckbunny.mp4")
    plan = plan_video(probe_video(clip), text_tokens=30)
    (seg,) = plan.segments
    windows = list(iter_frame_windows(clip, seg.frame_indices, plan.height, plan.width, window=5))
    assert [w.shape for w in windows] == [(5, 336, 588, 3), (5, 336, 588, 3), (2, 336, 588, 3)]
    assert all(w.dtype == np.uint8 for w in windows)
    got = np.concatenate(windows)
    assert np.array_equal(got, decord_frames(clip, seg.frame_indices, plan.height, plan.width))
    assert np.array_equal(got[-1], got[-2])  # the padded frame repeats the last one


def test_split_segments_across_many_keyframes(bikes_minute):
    info = probe_video(bikes_minute)
    plan = plan_video(info, 10, BudgetConfig(max_seq_tokens=100))
    assert len(plan.segments) > 2
    for seg in plan.segments:
        got = np.concatenate(list(iter_frame_windows(bikes_minute, seg.frame_indices, plan.height, plan.width, 7)))
        assert np.array_equal(got, decord_frames(bikes_minute, seg.frame_indices, plan.height, plan.width))


def test_default_plan_over_many_gops_equals_get_batch(bikes_minute):
    """2 fps over a minute of 1-3 s GOPs: many crossings are bridged, the frames must not change."""
    plan = plan_video(probe_video(bikes_minute), text_tokens=30)
    (seg,) = plan.segments
    got = np.concatenate(list(iter_frame_windows(bikes_minute, seg.frame_indices, plan.height, plan.width)))
    assert np.array_equal(got, decord_frames(bikes_minute, seg.frame_indices, plan.height, plan.width))


def test_sampled_frames_are_the_frames_a_sequential_read_gives():
    """Seeking must land on the right frame: compare with reading every frame in order."""
    clip = sample_clip("bikes.mp4")  # 6 keyframes in 250 frames
    reader = decord.VideoReader(str(clip), width=168, height=84)
    sequential = np.stack([reader.next().asnumpy() for _ in range(len(reader))])
    assert list(reader.get_key_indices()) == [0, 30, 76, 137, 187, 242]
    # 70 -> 80 and 130 -> 140 cross into the next GOP close to its keyframe: bridged, not seeked;
    # 31 -> 70 stays in its GOP; 140 -> 200 jumps a whole GOP: seeked.
    indices = [3, 29, 30, 31, 70, 80, 130, 140, 141, 200, 249, 249]
    for max_tail in (16, 0):
        got = np.concatenate(list(iter_frame_windows(clip, indices, 84, 168, window=4, max_tail=max_tail)))
        assert np.array_equal(got, sequential[indices])


def test_bridges_only_short_tails_into_the_next_gop():
    keys = [0, 30, 76, 137, 187, 242]
    request, wanted = bridged_request([29, 30, 70, 80, 130, 140, 200], keys, previous=3)
    assert request == [29, 30, 70, 75, 80, 130, 136, 140, 200]
    assert [r for r, w in zip(request, wanted) if w] == [29, 30, 70, 80, 130, 140, 200]
    assert bridged_request([80], keys, previous=70, max_tail=0) == ([80], [True])
    assert bridged_request([80], keys, previous=None) == ([80], [True])


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


def test_decode_errors(tmp_path, bad_inputs):
    clip = sample_clip("bikes.mp4")
    with pytest.raises(DecodeError, match="frame index out of range"):
        list(iter_frame_windows(clip, [0, 250], 84, 168))
    with pytest.raises(DecodeError, match="cannot open video"):
        list(iter_frame_windows(bad_inputs["truncated"], [0], 84, 168))
    corrupt = tmp_path / "corrupt.mp4"
    data = bytearray(clip.read_bytes())
    data[len(data) // 3 : 2 * len(data) // 3] = bytes(len(data) // 3)  # zero the middle of the media data
    corrupt.write_bytes(data)
    with pytest.raises(DecodeError) as info:
        list(iter_frame_windows(corrupt, range(250), 84, 168, id="c1"))
    assert info.value.as_row() == {"id": "c1", "input": str(corrupt), "stage": "decode",
                                   "reason": "truncated or corrupt"}
    with pytest.raises(ValueError):
        list(iter_frame_windows(clip, [5, 4], 84, 168))
