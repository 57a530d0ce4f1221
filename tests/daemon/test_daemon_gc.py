"""The garbage collector settings ``fiefdom serve`` applies once started: start-up
frozen and a higher young threshold by default, nothing with FIEFDOM_GC=default, a
threshold of one's own with FIEFDOM_GC=<n>; each undone by the function returned."""

from __future__ import annotations

import gc

import pytest

from fiefdom._gc import THRESHOLD, gc_threshold, tune_gc


def test_the_setting_read_from_the_environment() -> None:
    assert gc_threshold({}) == THRESHOLD
    assert gc_threshold({"FIEFDOM_GC": "default"}) is None
    assert gc_threshold({"FIEFDOM_GC": " 5000 "}) == 5000
    assert gc_threshold({"FIEFDOM_GC": "-3"}) is None  # a wrong value changes nothing
    assert gc_threshold({"FIEFDOM_GC": "lots"}) is None


@pytest.mark.parametrize(
    ("environ", "threshold", "frozen"),
    [
        ({}, THRESHOLD, True),
        ({"FIEFDOM_GC": "2000"}, 2000, True),
        ({"FIEFDOM_GC": "default"}, None, False),
    ],
)
def test_tuned_and_undone(environ: dict[str, str], threshold: int | None, frozen: bool) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    undo = tune_gc(environ)
    try:
        assert gc.get_threshold() == (threshold or before[0], before[1], before[2])
        assert (gc.get_freeze_count() > 0) is frozen
    finally:
        undo()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
