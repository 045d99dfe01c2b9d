import decord
import pytest

from pipeline.errors import ProbeError
from pipeline.probe import ProbeLimits, probe_video
from pipeline.sample_videos import _ffmpeg

from .helpers import probe_as_worker


def test_real_clips_match_decord(clips):
    for clip in clips:
        info = probe_video(clip)
        reader = decord.VideoReader(str(clip))
        assert info.n_frames == len(reader)
        assert info.fps == pytest.approx(reader.get_avg_fps())
        assert (info.height, info.width) == reader[0].shape[:2]
        assert info.codec == "h264"
        assert info.size_bytes == clip.stat().st_size
        # the last frame ends where n_frames / fps says the video ends (within one frame)
        last_end = float(reader.get_frame_timestamp(len(reader) - 1)[1])
        assert abs(info.duration_s - last_end) <= 1 / info.fps


def test_long_remuxed_video(long_tiny_video):
    info = probe_video(long_tiny_video)
    assert info.n_frames == 18000 and info.duration_s >= 600 and (info.width, info.height) == (176, 144)


def test_codec_from_matroska(tmp_path, clips):
    mkv = tmp_path / "clip.mkv"
    _ffmpeg("-i", str(clips[0]), "-c", "copy", str(mkv))
    assert probe_video(mkv).codec == "h264"


EXPECTED_REASONS = {
    "missing": "file not found",
    "empty": "empty file",
    "text_as_mp4": "not a video",
    "truncated": "truncated or corrupt",
    "truncated_faststart": "truncated or corrupt",
    "audio_only": "no video stream",
    "unreadable": "permission denied",
    "single_frame": "single frame",
    "extreme_aspect": "aspect ratio 40.0 exceeds 20",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_REASONS))
def test_bad_inputs_give_their_reason(bad_inputs, name):
    row = probe_as_worker(bad_inputs[name], id=name)
    assert row == {"id": name, "input": str(bad_inputs[name]), "stage": "probe", "reason": EXPECTED_REASONS[name]}


def test_limits_are_configurable(bad_inputs, clips):
    assert probe_video(bad_inputs["single_frame"], ProbeLimits(min_frames=1)).n_frames == 1
    assert probe_video(bad_inputs["extreme_aspect"], ProbeLimits(max_aspect=50)).width == 1280
    with pytest.raises(ProbeError, match="fewer than 1000"):
        probe_video(clips[0], ProbeLimits(min_frames=1000))
    with pytest.raises(ProbeError, match="invalid fps"):
        probe_video(clips[0], ProbeLimits(max_fps=10))


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(ProbeError, match="not a regular file"):
        probe_video(tmp_path)
