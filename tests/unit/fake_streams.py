"""An in-memory stand-in for the few Redis Stream commands :class:`History` uses.

Only what ``History`` calls: ``register_script`` (the publish script, run by the
test's own function), and ``pipeline()`` with ``xrange`` / ``xrevrange`` / ``execute``.
Ids and payloads come back as bytes, the way redis-py returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Entry = tuple[bytes, dict[bytes, bytes]]


def _key(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _in_range(entry_id: bytes, low: str, high: str) -> bool:
    key = _key(entry_id.decode())
    if low != "-":
        exclusive = low.startswith("(")
        bound = _key(low.lstrip("("))
        if key < bound or (exclusive and key == bound):
            return False
    if high != "+":
        exclusive = high.startswith("(")
        bound = _key(high.lstrip("("))
        if key > bound or (exclusive and key == bound):
            return False
    return True


class FakePipeline:
    def __init__(self, client: FakeStreamsRedis) -> None:
        self.client = client
        self.queued: list[Callable[[], list[Entry]]] = []

    def xrange(self, name: str, min: str = "-", max: str = "+", count: int | None = None):
        def run() -> list[Entry]:
            found = [e for e in self.client.streams.get(name, []) if _in_range(e[0], min, max)]
            return found[:count] if count is not None else found

        self.queued.append(run)
        return self

    def xrevrange(self, name: str, max: str = "+", min: str = "-", count: int | None = None):
        def run() -> list[Entry]:
            found = [e for e in self.client.streams.get(name, []) if _in_range(e[0], min, max)]
            found.reverse()
            return found[:count] if count is not None else found

        self.queued.append(run)
        return self

    def execute(self) -> list[Any]:
        self.client.round_trips += 1
        results = [run() for run in self.queued]
        self.queued = []
        return results


class FakeStreamsRedis:
    """Streams as lists of ``(id, {b"d": payload})``, oldest first."""

    def __init__(self) -> None:
        self.streams: dict[str, list[Entry]] = {}
        self.round_trips = 0
        self.scripts: list[str] = []
        self.script_calls: list[tuple[list[str], list[object]]] = []
        self.script_result: list[object] = [b"1-0", 0]

    def add(self, key: str, *ids: str) -> None:
        """Append entries with these ids; each payload is :func:`payload_of` the id."""
        for entry_id in ids:
            entry = (entry_id.encode(), {b"d": payload_of(entry_id)})
            self.streams.setdefault(key, []).append(entry)

    def register_script(self, script: str) -> Callable[..., list[object]]:
        self.scripts.append(script)

        def run(keys: list[str], args: list[object]) -> list[object]:
            self.script_calls.append((keys, args))
            return self.script_result

        return run

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def close(self) -> None:
        pass


def payload_of(entry_id: str) -> bytes:
    """The payload :meth:`FakeStreamsRedis.add` stores for ``entry_id``."""
    return f"<p>{entry_id}</p>".encode()
