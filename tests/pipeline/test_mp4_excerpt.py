"""Excerpts: small MP4s of the samples some frames need must decode to the whole file's frames."""
import subprocess

import decord
import numpy as np
import pytest

from pipeline.mp4_excerpt import ExcerptPlan
from pipeline.mp4_track import NoSampleTable, read_video_track
from pipeline.sample_videos import ffmpeg_exe, sample_clip


def ffmpeg(*args) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def whole_file_frames(path, indices, height, width) -> np.ndarray:
    return decord.VideoReader(str(path), width=width, height=height, num_threads=1).get_batch(list(indices)).asnumpy()


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"])
def test_sample_table_numbers_frames_as_decord_does(name):
    clip = sample_clip(name)
    track = read_video_track(clip)
    reader = decord.VideoReader(str(clip), num_threads=1)
    assert len(track) == len(reader)
    shown_as = np.empty(len(track), np.int64)
    shown_as[track.presentation_order()] = np.arange(len(track))
    assert sorted(shown_as[track.sync]) == list(reader.get_key_indices())
    # decord's timestamps are ours shifted by the container's start offset
    ours = np.sort(track.pts) / track.timescale
    offset = reader.get_frame_timestamp(range(len(reader)))[:, 0] - ours
    assert np.ptp(offset) < 1e-4
    assert int((track.offsets + track.sizes).max()) <= clip.stat().st_size


def sequential_frames(path, indices, height, width) -> np.ndarray:
    """Every frame read in order, then picked: the ground truth even where decord's seeks go wrong
    (after a seek in open-GOP or edit-listed files its ``get_batch`` returns other frames)."""
    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    return np.stack([reader.next().asnumpy() for _ in range(len(reader))])[list(indices)]


def random_indices(rng, n_frames: int) -> list[int]:
    count = int(rng.integers(5, 120))
    indices = np.sort(rng.integers(0, n_frames, count))
    return [*indices.tolist(), int(indices[-1])]  # a repeated last index, as a plan's padding


def test_excerpts_leave_out_what_no_wanted_frame_needs(bikes_minute):
    track = read_video_track(bikes_minute)
    indices = list(range(0, len(track), 12))  # 2 fps from 25 fps
    with open(bikes_minute, "rb") as f:
        parts = list(ExcerptPlan(f, track, indices).excerpts(100_000))
    assert len(parts) > 3
    assert sum(len(p.frames) for p in parts) == len(indices)
    stored = sum(p.samples for p in parts)
    last_wanted = track.presentation_order()[indices[-1]]
    # non-reference B-frames and GOP tails are left out: well under the samples a reader would decode
    assert stored < 0.75 * (last_wanted + 1), stored


@pytest.fixture(scope="module")
def special_files(tmp_path_factory):
    """Files excerpts can't serve exactly (each must fall back to the whole file), and HEVC."""
    folder = tmp_path_factory.mktemp("special")
    bikes = sample_clip("bikes.mp4")
    files = {name: folder / name for name in ["cut.mp4", "fragmented.mp4", "bikes.mkv", "open_gop.mp4", "hevc.mp4"]}
    ffmpeg("-ss", 1.5, "-i", bikes, "-c", "copy", "-an", files["cut.mp4"])  # an edit list hides frames
    ffmpeg("-i", bikes, "-c", "copy", "-movflags", "frag_keyframe+empty_moov", files["fragmented.mp4"])
    ffmpeg("-i", bikes, "-c", "copy", files["bikes.mkv"])
    synthetic = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", 6, "-pix_fmt", "yuv420p"]
    ffmpeg(*synthetic, "-c:v", "libx264", "-x264-params", "open-gop=1:keyint=40:bframes=3", files["open_gop.mp4"])
    ffmpeg(*synthetic, "-c:v", "libx265", "-x265-params", "keyint=40:bframes=3:open-gop=0:log-level=error",
           "-tag:v", "hvc1", files["hevc.mp4"])
    return files


@pytest.mark.parametrize("name,reason", [("cut.mp4", "edit list"), ("fragmented.mp4", "fragmented"),
                                         ("bikes.mkv", "not an MP4"), ("open_gop.mp4", "open GOPs")])
def test_files_excerpts_cannot_serve_are_refused(special_files, name, reason):
    path = special_files[name]
    with pytest.raises(NoSampleTable, match=reason):
        track = read_video_track(path)
        with open(path, "rb") as f:
            ExcerptPlan(f, track, [0])


def test_an_excerpt_holds_at_most_its_budget_plus_one_gop(bikes_minute):
    """What bounds decord's memory on a long video: no reader ever sees more than this."""
    track = read_video_track(bikes_minute)
    starts = np.flatnonzero(track.sync)
    largest_gop = max(int(track.sizes[a:b].sum()) for a, b in zip(starts, [*starts[1:], len(track)]))
    budget = 150_000
    with open(bikes_minute, "rb") as f:
        parts = list(ExcerptPlan(f, track, range(len(track))).excerpts(budget))
    header = 64 * 1024  # moov of a few thousand samples
    assert len(parts) > 5
    assert max(len(p.data) for p in parts) <= budget + largest_gop + header
    assert sum(p.samples for p in parts) == len(track)  # every frame wanted: nothing left out
