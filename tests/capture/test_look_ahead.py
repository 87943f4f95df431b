"""LookAhead: items looked at stay to be taken, in order; an error met while looking comes where it came."""

from __future__ import annotations

import pytest

from streamfuse.capture.look_ahead import LookAhead


def _items():
    yield from (7, 7, 7, 8)
    raise OSError("decoding stopped")


def test_items_looked_at_are_taken_in_order_and_an_error_met_comes_after_them() -> None:
    items = LookAhead(_items())
    assert next(items) == 7
    assert items.count(lambda x: x == 7, 5) == 2 and items.count(lambda x: x > 0, 10) == 3  # up to the error
    assert [next(items) for _ in range(3)] == [7, 7, 8]
    with pytest.raises(OSError, match="decoding stopped"):
        next(items)
    assert next(items, None) is None


def test_a_count_stops_at_the_end_of_the_items() -> None:
    items = LookAhead(iter([1, 1]))
    assert items.count(lambda x: x == 1, 5) == 2 and list(items) == [1, 1]


def test_a_count_stops_at_its_limit_and_looks_no_further() -> None:
    # a still run is told after STILL_REPEATS frames: a live file's later frames are not decoded to tell it
    pulled: list[int] = []
    items = LookAhead(pulled.append(x) or x for x in [1, 1, 1, 1])
    assert items.count(lambda x: x == 1, 2) == 2 and pulled == [1, 1]
    assert items.count(lambda x: x == 1, 2) == 2 and pulled == [1, 1]  # looked at already: none pulled again
    assert list(items) == [1, 1, 1, 1]
