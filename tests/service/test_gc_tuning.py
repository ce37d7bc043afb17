"""The consumer's garbage-collector settings: applied when asked, left alone at 0."""

import gc
from collections.abc import Iterator

import pytest

from service.gc_tuning import thaw_frozen_objects, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    _, middle, old = gc.get_threshold()
    start_up = [object() for _ in range(100)]  # alive at "start-up"
    tune_garbage_collector(20_000)
    assert gc.get_threshold() == (20_000, middle, old)
    assert gc.get_freeze_count() >= len(start_up)


@pytest.mark.usefixtures("restored_collector")
def test_zero_leaves_the_collector_as_it_is() -> None:
    before = gc.get_threshold()
    tune_garbage_collector(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restored_collector")
def test_thawing_hands_the_frozen_objects_back() -> None:
    """After a model switch: the old engine, a reference cycle, must be collectable."""
    tune_garbage_collector(20_000)
    assert gc.get_freeze_count() > 0
    thaw_frozen_objects()
    assert gc.get_freeze_count() == 0
