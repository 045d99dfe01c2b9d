import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.budget import plan_video
from pipeline.probe import VideoInfo
from pipeline.units import estimate_stored_bytes, split_into_units


def test_units_are_near_the_target_and_keep_order():
    items = [("a", 40), ("b", 40), ("c", 45), ("d", 250), ("e", 10), ("f", 90), ("g", 5)]
    assert split_into_units(items, 100) == [["a", "b"], ["c"], ["d"], ["e", "f"], ["g"]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=60), st.integers(1, 2000))
def test_unit_properties(sizes, target):
    items = [(f"k{i}", n) for i, n in enumerate(sizes)]
    units = split_into_units(items, target)
    assert [k for unit in units for k in unit] == [k for k, _ in items]  # every key once, in order
    assert units == split_into_units(items, target)
    size = dict(items)
    largest = max(sizes, default=0)
    for unit in units:
        total = sum(size[k] for k in unit)
        if len(unit) > 1:
            assert total <= target + largest / 2  # joined only while that got closer to the target
            assert all(size[k] <= target for k in unit)  # an item over the target is a unit by itself


def test_bad_arguments():
    with pytest.raises(ValueError):
        split_into_units([("a", 1)], 0)
    with pytest.raises(ValueError):
        split_into_units([("a", 1), ("a", 2)], 10)


def test_estimate_counts_planned_frames_over_the_ratio():
    plan = plan_video(VideoInfo("/v.mp4", 5.28, 25.0, 132, 1280, 720, "h264", 1), 10)
    raw = 12 * 336 * 588 * 3
    assert estimate_stored_bytes(plan, 4.0) == raw // 4 + 4096
