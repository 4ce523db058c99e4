"""turbocast.changes: the flushes of one instance in a transaction merge into one change."""

from __future__ import annotations

import pytest

from turbocast.changes import CREATE, DESTROY, UPDATE, Changes, merge


@pytest.mark.parametrize(
    ("before", "after", "merged"),
    [
        (None, CREATE, CREATE),
        (None, UPDATE, UPDATE),
        (None, DESTROY, DESTROY),
        (CREATE, UPDATE, CREATE),
        (CREATE, DESTROY, None),
        (UPDATE, UPDATE, UPDATE),
        (UPDATE, DESTROY, DESTROY),
        (DESTROY, CREATE, UPDATE),
    ],
)
def test_merge_gives_the_one_change_pages_should_see(before, after, merged):
    assert merge(before, after) == merged


def _kinds(changes: Changes) -> list[tuple[object, str, object]]:
    return [(key, change.kind, change.snapshot) for key, change in changes.items()]


def test_an_insert_flushed_three_times_is_one_create_with_the_latest_snapshot():
    changes: Changes[str, int] = Changes()
    changes.record("post 1", CREATE, 1)
    changes.record("post 1", UPDATE, 2)
    changes.record("post 1", UPDATE, 3)
    assert _kinds(changes) == [("post 1", CREATE, 3)]


def test_an_insert_then_a_delete_is_nothing():
    changes: Changes[str, int] = Changes()
    changes.record("post 1", CREATE, 1)
    changes.record("post 1", DESTROY, 1)
    assert len(changes) == 0
    assert _kinds(changes) == []


def test_an_update_then_a_delete_is_one_destroy():
    changes: Changes[str, int] = Changes()
    changes.record("post 1", UPDATE, 1)
    changes.record("post 1", UPDATE, 2)
    changes.record("post 1", DESTROY, 3)
    assert _kinds(changes) == [("post 1", DESTROY, 3)]


def test_instances_keep_the_order_they_first_changed_in():
    changes: Changes[str, int] = Changes()
    changes.record("a", CREATE, 1)
    changes.record("b", UPDATE, 1)
    changes.record("a", UPDATE, 2)
    changes.record("c", DESTROY, 1)
    assert [key for key, _ in changes.items()] == ["a", "b", "c"]


def test_a_released_savepoint_merges_into_the_transaction_around_it():
    outer: Changes[str, int] = Changes()
    outer.record("a", CREATE, 1)
    outer.record("b", UPDATE, 1)
    savepoint: Changes[str, int] = Changes()
    savepoint.record("a", DESTROY, 2)  # born in the outer transaction, gone in the savepoint
    savepoint.record("b", UPDATE, 2)
    savepoint.record("c", CREATE, 1)
    outer.absorb(savepoint)
    assert _kinds(outer) == [("b", UPDATE, 2), ("c", CREATE, 1)]
