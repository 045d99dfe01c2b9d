"""Looping a clip's video track without ffmpeg: the loop must decode to the clip's frames, repeated."""
import decord
import numpy as np
import pytest

from pipeline.mp4_loop import clip_duration, loop_to_length, loop_video_track
from pipeline.mp4_track import read_video_track
from pipeline.sample_videos import sample_clip


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4"])  # bikes has B-frames
def test_loop_decodes_to_the_clip_repeated(name, tmp_path):
    clip = sample_clip(name)
    looped = loop_video_track(clip, tmp_path / "loop3.mp4", 3)
    source = decord.VideoReader(str(clip), num_threads=1)
    loop = decord.VideoReader(str(looped), num_threads=1)
    n = len(source)
    assert len(loop) == 3 * n
    picks = [0, 1, n // 2, n - 1, n, n + 1, 2 * n - 1, 2 * n, 3 * n - 1]  # both loop boundaries
    expected = source.get_batch([i % n for i in picks]).asnumpy()
    assert np.array_equal(loop.get_batch(picks).asnumpy(), expected)
    times = loop.get_frame_timestamp(range(len(loop)))[:, 0]
    assert np.all(np.diff(times) > 0)
    keys = source.get_key_indices()
    assert list(loop.get_key_indices()) == [k + r * n for r in range(3) for k in keys]


def test_loop_to_length_reaches_the_length(tmp_path):
    clip = sample_clip("bigbuckbunny.mp4")
    track = read_video_track(clip)
    seconds = clip_duration(track) / track.timescale
    looped = read_video_track(loop_to_length(clip, tmp_path / "long.mp4", 2.5 * seconds))
    assert len(looped) == 3 * len(track)
    assert looped.timescale == track.timescale
