"""What a transaction did to each instance, merged into the one change its pages should see.

A transaction may flush an instance several times: insert it, then update it twice;
insert it, then delete it. Pages saw none of it, and after the commit they should get
one stream per instance: the insert (with its final state), nothing, or the removal.
:class:`Changes` keeps that one change per instance, in the order instances first
changed. Pure bookkeeping: no SQLAlchemy, no Flask.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Kind = Literal["create", "update", "destroy"]

CREATE: Kind = "create"
UPDATE: Kind = "update"
DESTROY: Kind = "destroy"
KINDS: frozenset[Kind] = frozenset((CREATE, UPDATE, DESTROY))

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")

# (what pages were told so far, what happened next) -> what they should be told instead;
# ``None``: nothing at all. Every pair not listed gives the later kind.
_MERGED: dict[tuple[Kind, Kind], Kind | None] = {
    (CREATE, UPDATE): CREATE,  # pages never saw it: show the final state, once
    (CREATE, DESTROY): None,  # born and gone in one transaction
    (UPDATE, DESTROY): DESTROY,
    (DESTROY, CREATE): UPDATE,  # deleted and inserted again under the same key
}


def merge(before: Kind | None, after: Kind) -> Kind | None:
    """The one change that stands for ``before`` followed by ``after``.

    :param before: the instance's change so far in this transaction, or ``None``.
    :param after: the change just flushed.
    :returns: the merged change, or ``None`` when pages should hear nothing.
    """
    if before is None:
        return after
    return _MERGED.get((before, after), after)


@dataclass(frozen=True)
class Change(Generic[S]):
    """One instance's merged change, and what was known of it at its latest flush."""

    kind: Kind
    snapshot: S


class Changes(Generic[K, S]):
    """One transaction's changes, one per instance key, in the order they first changed."""

    def __init__(self) -> None:
        self._changes: dict[K, Change[S]] = {}

    def record(self, key: K, kind: Kind, snapshot: S) -> None:
        """Merge a flushed change into the instance's change so far.

        :param key: the instance's key (its class and primary key).
        :param kind: what the flush did to it.
        :param snapshot: what the broadcast needs of it now (the latest one wins).
        """
        previous = self._changes.get(key)
        merged = merge(previous.kind if previous else None, kind)
        if merged is None:
            del self._changes[key]
        else:
            self._changes[key] = Change(merged, snapshot)

    def absorb(self, later: Changes[K, S]) -> None:
        """Merge the changes of a transaction that came after these (a released savepoint).

        :param later: the later transaction's changes.
        """
        for key, change in later.items():
            self.record(key, change.kind, change.snapshot)

    def items(self) -> Iterator[tuple[K, Change[S]]]:
        """Each instance's key and change, in the order the instances first changed."""
        return iter(list(self._changes.items()))

    def __len__(self) -> int:
        return len(self._changes)
