"""Job ids: time-ordered, unique, strictly increasing (FIFO by id)."""

from __future__ import annotations


def test_ids_are_strictly_increasing_even_within_a_microsecond():
    from api.ids import new_id

    ids = [new_id() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)
