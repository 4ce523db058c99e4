"""The bounded queue between the relay thread and one socket's writer.

The relay puts messages here (each shared by every socket it goes to, its
frames encoded once) and never touches a socket; the socket's own handler
thread drains the queue and is the only thread that writes to that socket.
A client that stops reading fills its own outbox and nothing else: when the
bound is passed the outbox drops what it holds and asks the writer to close
the socket with :data:`CLOSE_OUTBOX_OVERFLOW`. The bound is in bytes, so it
means "this client is too slow", not "the writer was a little late".
"""

from __future__ import annotations

import queue
import struct
import threading
import zlib
from typing import TYPE_CHECKING, NamedTuple

from .settings import DEFAULTS

if TYPE_CHECKING:
    from .message import Message

#: Close code sent when a client reads too slowly and its outbox overflows.
CLOSE_OUTBOX_OVERFLOW = 4001

#: The default bound of an outbox: 1 MiB of messages waiting for one socket.
DEFAULT_OUTBOX_BYTES: int = DEFAULTS["TURBO_OUTBOX_BYTES"]


def encode_text_frame(payload: bytes, *, compressed: bool = False) -> bytes:
    """Encode one unfragmented, unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends.

    Encoding happens once per message in the relay; every socket the message
    goes to writes the same bytes.

    :param payload: the UTF-8 text of the message, or its deflated bytes.
    :param compressed: the payload is deflated (permessage-deflate, RFC 7692): RSV1 is set.
    """
    first = 0xC1 if compressed else 0x81
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 0x10000:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def deflate_text_frame(text: bytes) -> bytes:
    """The frame of a text message compressed for permessage-deflate, or the plain one when
    deflating would not make it smaller.

    Each message is compressed on its own (the server's side of every socket negotiates
    ``server_no_context_takeover``), so one compressed frame serves every socket that
    negotiated the extension, as an uncompressed one does (RFC 7692 §7.2.1: the sync
    flush's trailing ``00 00 ff ff`` is left off).

    :param text: the UTF-8 text of the message.
    """
    # The fastest level: on demo-like HTML it costs a sixth to a half of the default's
    # time for 5-20 % more bytes (bench/deflate.py).
    compressor = zlib.compressobj(zlib.Z_BEST_SPEED, zlib.DEFLATED, -15)
    deflated = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    if len(deflated) >= len(text):
        return encode_text_frame(text)
    return encode_text_frame(deflated, compressed=True)


class Closing(NamedTuple):
    """Why the writer must stop: the close code and reason it sends (``code=None``: send none)."""

    code: int | None
    reason: str


class _Control:
    """A control event (pong, close echo) for the writer, from the socket's reader thread."""

    __slots__ = ("event",)

    def __init__(self, event: object) -> None:
        self.event = event


class _GreenQueue:
    """An outbox's queue under gevent: a list, and gevent's Event to wake the writer.

    Under monkey-patching ``queue.SimpleQueue`` is gevent's, which holds three deques
    (its items, getters and putters): 2.3 KiB for every idle socket. This holds one
    list and one Event (with the outbox, about 330 bytes measured). Greenlets switch
    only where they wait, so appending to the list and taking it whole need no lock;
    the writer clears the Event after it took the list, in the same step, so no
    wake-up is lost.
    """

    __slots__ = ("_items", "_ready")

    def __init__(self) -> None:
        from gevent.event import Event

        self._items: list[Message | _Control] = []
        self._ready = Event()

    def put(self, item: Message | _Control) -> None:
        self._items.append(item)
        self._ready.set()

    def qsize(self) -> int:
        return len(self._items)

    def take(self, timeout: float | None) -> list[Message | _Control]:
        """Everything queued, in order; waits up to ``timeout`` s when nothing is."""
        if not self._items and (timeout is None or timeout > 0):
            self._ready.wait(timeout)
        items, self._items = self._items, []
        self._ready.clear()
        return items


def _take_all(
    q: queue.SimpleQueue[Message | _Control], timeout: float | None
) -> list[Message | _Control]:
    """Everything a :class:`queue.SimpleQueue` holds, waiting up to ``timeout`` s for the first."""
    items: list[Message | _Control] = []
    if q.qsize() or timeout is None or timeout > 0:
        try:
            items.append(q.get(timeout=timeout))
        except queue.Empty:
            pass
        else:
            # What else is there, without raising Empty at the end of every batch.
            get = q.get_nowait
            items.extend(get() for _ in range(q.qsize()))
    return items


def _gevent_patched() -> bool:
    # gunicorn's gevent worker patched the standard library before the app was imported.
    return queue.SimpleQueue.__module__.startswith("gevent")


# Only for closing, which is rare: one lock for every outbox, not one each.
_closing_lock = threading.Lock()

# Put after a close or an overflow so that a writer blocked in drain() wakes up.
_WAKE = _Control(None)

#: A control event that means "time for a heartbeat ping" (see :meth:`Outbox.beat`).
HEARTBEAT = object()
_BEAT = _Control(HEARTBEAT)


class Outbox:
    """A queue of messages for one socket, bounded by bytes, drained in batches by its one writer.

    Built on :class:`queue.SimpleQueue`: putting is one C call that never blocks
    and wakes the writer only when it waits (under gevent's monkey-patching, on a
    list and gevent's Event instead: a seventh of the memory of gevent's queue). The
    bound counts the bytes of the messages that wait (as AnyCable and Centrifugo do,
    about 1 MB by default), not their number: a burst of small messages to a client
    that reads is absorbed, while a client that stops reading passes the bound and
    is closed with :data:`CLOSE_OUTBOX_OVERFLOW`. Two counters, each written by one
    thread only (the relay adds, the writer takes away), so no lock is needed on the
    path of every message.

    :param max_bytes: how many bytes of messages may wait before the socket is
        closed with :data:`CLOSE_OUTBOX_OVERFLOW`.
    """

    __slots__ = ("max_bytes", "_queue", "_put_bytes", "_taken_bytes", "_closing",
                 "_discard", "_discarded", "_refused")  # fmt: skip

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("an outbox holds at least one byte")
        self.max_bytes = max_bytes
        self._queue: queue.SimpleQueue[Message | _Control] | _GreenQueue = (
            _GreenQueue() if _gevent_patched() else queue.SimpleQueue()
        )
        self._put_bytes = 0  # written by the relay thread only
        self._taken_bytes = 0  # written by the writer only
        self._closing: Closing | None = None
        self._discard = False  # after an overflow, what still waits is thrown away
        self._discarded = 0  # thrown away after an overflow (written by the writer only)
        self._refused = 0  # refused while closing (written by the relay thread only)

    def put(self, message: Message) -> bool:
        """Queue one message; ``False`` when the outbox is closing or this message overflowed it.

        Only the relay thread puts messages.

        :param message: the message, shared read-only between sockets.
        """
        if self._closing is not None:
            self._refused += 1
            return False
        waiting = self._put_bytes - self._taken_bytes
        self._put_bytes += message.size
        self._queue.put(message)
        # A message larger than the bound still goes to a client that has caught up.
        if waiting and waiting + message.size > self.max_bytes:
            self._discard = True
            self.close(CLOSE_OUTBOX_OVERFLOW, "outbox overflow: client too slow")
            return False
        return True

    @property
    def discarded(self) -> int:
        """Messages queued, then thrown away unsent because the outbox overflowed."""
        return self._discarded

    @property
    def refused(self) -> int:
        """Messages refused because the outbox was closing (or had overflowed)."""
        return self._refused

    @property
    def dropped(self) -> int:
        """Messages thrown away unsent: :attr:`discarded` and :attr:`refused`."""
        return self._discarded + self._refused

    @property
    def pending_bytes(self) -> int:
        """How many bytes of messages wait for the writer."""
        return self._put_bytes - self._taken_bytes

    def put_control(self, event: object) -> None:
        """Queue a control event (a wsproto event) for the writer to encode and send.

        :param event: the event, e.g. the response to a client's ping.
        """
        self._queue.put(_Control(event))

    def beat(self) -> None:
        """Tell the writer it is time for a heartbeat (it gets :data:`HEARTBEAT` as a control).

        One heartbeat thread per process beats every socket, so a writer waits
        without a timer of its own.
        """
        self._queue.put(_BEAT)

    def close(self, code: int | None, reason: str = "") -> None:
        """Ask the writer to close the socket; the first reason given wins.

        Messages already queued are still sent first (except after an overflow).

        :param code: the WebSocket close code to send, or ``None`` to send no close frame
            (the peer is gone).
        :param reason: a short text for the close frame and the log.
        """
        with _closing_lock:
            if self._closing is None:
                self._closing = Closing(code, reason)
        self._queue.put(_WAKE)

    @property
    def closing(self) -> Closing | None:
        """Why the outbox is closing, or ``None`` while it is open."""
        return self._closing

    def __len__(self) -> int:
        """How many items wait (messages, and the rare control event or wake-up)."""
        return self._queue.qsize()

    def drain(self, timeout: float | None) -> tuple[list[object], list[Message], Closing | None]:
        """Wait up to ``timeout`` seconds for work; return everything queued at once.

        :param timeout: seconds to wait when nothing is queued (``None``: forever).
        :returns: ``(controls, messages, closing)``; empty lists when the wait timed out.
            Once the outbox is closing, no messages: only the controls still due.
        """
        q = self._queue
        items = q.take(timeout) if isinstance(q, _GreenQueue) else _take_all(q, timeout)
        closing = self._closing
        messages: list[Message] = [m for m in items if type(m) is not _Control]  # type: ignore[misc]
        controls = [m.event for m in items if type(m) is _Control and m is not _WAKE]
        self._taken_bytes += sum(m.size for m in messages)
        if self._discard and messages:
            self._discarded += len(messages)
            messages = []
        return controls, messages, closing
