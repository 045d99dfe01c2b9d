import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.budget import BudgetConfig, plan_video, vision_tokens
from pipeline.errors import PlanError
from pipeline.probe import VideoInfo


def info_of(n_frames, fps, height, width) -> VideoInfo:
    return VideoInfo("/v.mp4", n_frames / fps, fps, n_frames, width, height, "h264", 1)


def test_vision_tokens_one_token_per_28px_of_a_frame_pair():
    assert vision_tokens(2, 28, 28) == 1
    assert vision_tokens(3, 56, 84) == 2 * 2 * 3  # 3 frames round up to 2 groups
    with pytest.raises(ValueError):
        vision_tokens(2, 30, 28)


def test_short_720p_clip_keeps_default_rate_and_largest_size():
    plan = plan_video(info_of(132, 25.0, 720, 1280), text_tokens=20)
    assert (plan.sample_fps, plan.height, plan.width) == (2.0, 336, 588)
    (seg,) = plan.segments
    # 11 samples at 0, 0.5, ... 5.0 s, padded to 12 with the last frame repeated
    assert seg.frame_indices == [0, 13, 25, 38, 50, 63, 75, 88, 100, 113, 125, 125]
    assert seg.timestamps[:3] == [0.0, 0.52, 1.0]
    assert seg.vision_tokens == 6 * 12 * 21 and (seg.t_start, seg.t_end) == (0.0, 5.28)


def test_hour_lowers_fps_first_then_two_hours_lowers_size():
    hour = plan_video(info_of(90000, 25.0, 720, 1280), text_tokens=100)
    assert 0.5 < hour.sample_fps < 2.0 and (hour.height, hour.width) == (336, 588)
    two = plan_video(info_of(180000, 25.0, 720, 1280), text_tokens=100)
    assert two.sample_fps == 0.5 and two.height * two.width < 336 * 588 and len(two.segments) == 1


def test_overflow_split_or_refuse():
    day = info_of(24 * 3600 * 25, 25.0, 720, 1280)
    plan = plan_video(day, text_tokens=100)
    assert len(plan.segments) > 1 and plan.sample_fps == 0.5 and plan.height * plan.width >= 112 * 112
    with pytest.raises(PlanError) as info:
        plan_video(day, text_tokens=100, cfg=BudgetConfig(overflow="refuse"))
    assert info.value.reason == "exceeds token budget at minimum fps and size" and info.value.input == "/v.mp4"


def test_text_that_leaves_no_room_is_an_error():
    with pytest.raises(PlanError, match="no room"):
        plan_video(info_of(100, 25.0, 720, 1280), text_tokens=262144)


def test_small_source_is_not_upscaled():
    plan = plan_video(info_of(120, 29.97, 144, 176), text_tokens=10)
    assert (plan.height, plan.width) == (140, 168)
    tiny = plan_video(info_of(120, 29.97, 20, 20), text_tokens=10)
    assert (tiny.height, tiny.width) == (28, 28)


videos = st.builds(
    lambda n, fps, short, aspect, portrait: info_of(
        n, fps, *((short, min(int(short * aspect), 8192)) if not portrait else (min(int(short * aspect), 8192), short))),
    st.integers(1, 400_000), st.floats(0.2, 120), st.integers(16, 2160), st.floats(1, 20), st.booleans())
configs = st.builds(
    lambda seq, fps, min_fps, max_side, min_side, overflow: BudgetConfig(
        max_seq_tokens=seq, fps=fps, min_fps=min(min_fps, fps), max_pixels=max_side**2,
        min_pixels=min(min_side, max_side) ** 2, overflow=overflow),
    st.sampled_from([4096, 32768, 262144]), st.floats(0.25, 4), st.floats(0.1, 1), st.integers(28, 1024),
    st.integers(1, 448), st.sampled_from(["split", "refuse"]))


@settings(max_examples=300, deadline=None)
@given(videos, st.integers(0, 3000), configs)
def test_plan_properties(info, text_tokens, cfg):
    try:
        plan = plan_video(info, text_tokens, cfg)
    except PlanError as err:
        assert err.stage == "plan" and err.input == info.path
        return
    assert plan == plan_video(info, text_tokens, cfg)  # deterministic
    h, w, block = plan.height, plan.width, cfg.block
    assert h % block == 0 and w % block == 0 and h * w <= cfg.max_pixels
    assert h <= max(block, info.height // block * block) and w <= max(block, info.width // block * block)
    top, low = min(cfg.fps, info.fps), min(cfg.min_fps, info.fps)
    assert low <= plan.sample_fps <= top
    if len(plan.segments) > 1:
        assert cfg.overflow == "split" and plan.sample_fps == low

    frames = [i for s in plan.segments for i in s.frame_indices]
    padding = -len(sorted(set(frames))) % cfg.temporal_patch
    real = frames[: len(frames) - padding]
    assert all(b > a for a, b in itertools.pairwise(real)) and frames[len(real):] == [real[-1]] * padding
    assert 0 <= real[0] == 0 and real[-1] < info.n_frames
    step = info.fps / plan.sample_fps
    assert all(abs(idx - k * step) <= 0.5 + 1e-6 for k, idx in enumerate(real))  # nearest frame
    assert math.floor(len(real) * step + 0.5) >= info.n_frames  # sampled up to the end

    assert plan.segments[0].t_start == 0.0 and plan.segments[-1].t_end == info.duration_s
    for k, seg in enumerate(plan.segments):
        assert seg.index == k and len(seg.frame_indices) % cfg.temporal_patch == 0
        assert seg.vision_tokens == vision_tokens(len(seg.frame_indices), h, w, cfg)
        assert seg.vision_tokens + text_tokens <= cfg.max_seq_tokens
        assert seg.timestamps == [i / info.fps for i in seg.frame_indices]
        assert all(seg.t_start <= t < seg.t_end for t in seg.timestamps)
        if k:
            assert plan.segments[k - 1].t_end == seg.t_start == seg.timestamps[0]

    one_more_group = vision_tokens(len(frames) + cfg.temporal_patch, h, w, cfg) + text_tokens
    if len(plan.segments) == 1 and low < plan.sample_fps < top:
        assert one_more_group > cfg.max_seq_tokens  # the rate was lowered only as far as needed


@settings(max_examples=100, deadline=None)
@given(videos, st.integers(0, 3000))
def test_refuse_differs_from_split_only_where_a_split_is_needed(info, text_tokens):
    refuse, split = (BudgetConfig(max_seq_tokens=8192, overflow=mode) for mode in ("refuse", "split"))
    try:
        split_plan = plan_video(info, text_tokens, split)
    except PlanError as err:
        assert err.reason == "text leaves no room for video"
        return
    try:
        assert plan_video(info, text_tokens, refuse) == split_plan and len(split_plan.segments) == 1
    except PlanError as err:
        assert err.reason == "exceeds token budget at minimum fps and size" and len(split_plan.segments) > 1


@pytest.fixture(scope="module")
def group_text(tmp_path_factory):
    """Qwen3-VL's per-group text (times and markers) with a real tokenizer of the qwen format."""
    import functools

    from pipeline.chat_formats import QWEN
    from pipeline.text import encode_text, train_tokenizer
    from pipeline.video_layout import TIMESTAMPED_GROUPS, GroupText

    tok = train_tokenizer([f"<{t / 10:.1f} seconds>" for t in range(0, 50000, 97)], tmp_path_factory.mktemp("tok") /
                          "tokenizer.json", vocab_size=400, fmt=QWEN)
    return GroupText(TIMESTAMPED_GROUPS, QWEN, functools.partial(encode_text, tok), temporal_patch=2)


# up to ~5.5 hours: every group's time text is tokenized once per plan (days of video take seconds)
hours = st.builds(lambda n, fps, short: info_of(n, fps, short, short * 16 // 9),
                  st.integers(1, 100_000), st.floats(5, 60), st.integers(16, 1080))


@settings(max_examples=40, deadline=None)
@given(hours, st.integers(0, 500), st.sampled_from([1024, 4096, 32768]))
def test_layout_text_is_budgeted(group_text, info, text_tokens, seq):
    """With a per-group layout every planned segment's vision, text and layout text fit the
    sequence, and a lowered rate is no lower than the layout text makes it."""
    cfg = BudgetConfig(max_seq_tokens=seq, max_pixels=112 * 112, min_pixels=56 * 56)
    try:
        plan = plan_video(info, text_tokens, cfg, extra_tokens=group_text.extra_tokens)
    except PlanError as err:
        assert err.reason in ("text leaves no room for video", "exceeds token budget at minimum fps and size")
        return
    for seg in plan.segments:
        assert seg.vision_tokens + group_text.extra_tokens(seg.timestamps) + text_tokens <= seq
    top, low = min(cfg.fps, info.fps), min(cfg.min_fps, info.fps)
    if len(plan.segments) == 1 and low < plan.sample_fps < top:
        (seg,) = plan.segments
        per_group = vision_tokens(2, plan.height, plan.width, cfg) + max(
            group_text.extra_tokens([t, t]) for t in seg.timestamps)
        used = seg.vision_tokens + group_text.extra_tokens(seg.timestamps) + text_tokens
        assert used + 2 * per_group > seq  # at most a group short of the tightest rate


def test_layout_text_would_overflow_a_plan_that_ignores_it(group_text):
    hour = info_of(90000, 25.0, 720, 1280)
    cfg = BudgetConfig(max_seq_tokens=32768)
    blind = plan_video(hour, 100, cfg)
    (seg,) = blind.segments
    assert seg.vision_tokens + group_text.extra_tokens(seg.timestamps) + 100 > cfg.max_seq_tokens
    (fit,) = plan_video(hour, 100, cfg, extra_tokens=group_text.extra_tokens).segments
    assert fit.vision_tokens + group_text.extra_tokens(fit.timestamps) + 100 <= cfg.max_seq_tokens
