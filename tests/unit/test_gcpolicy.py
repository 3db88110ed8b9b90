"""The daemon's garbage-collection settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pyflannel import gcpolicy


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored")
def test_collections_are_rare_and_start_up_objects_are_left_out_of_them() -> None:
    gcpolicy.tune()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    gcpolicy.settle()
    assert gc.get_freeze_count() > 1000  # the modules and objects loaded so far
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # a cycle made later is still collected
