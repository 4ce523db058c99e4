"""The bounded queue between the relay thread and one socket's writer.

The relay puts messages here (each shared by every socket it goes to, its
frames encoded once); the socket's own handler thread drains the queue and
writes them (or the relay writes them itself: see below). A client that stops
reading fills its own outbox and nothing else: when the bound is passed the
outbox drops what it holds and asks the writer to close the socket with
:data:`CLOSE_OUTBOX_OVERFLOW`. The bound is in bytes, so it means "this client is
too slow", not "the writer was a little late".

Writing now. In threads mode a writer that waits is a thread to wake, one
context switch per socket: a broadcast to 1,000 sockets woke 1,000 threads, each
taking the GIL in turn. So a plain socket's writer, once live, lets the relay
write itself (:meth:`Outbox.write_now`) when everything put was sent and the
writer is not writing: the relay hands the message to the socket's write
function, which sends what the socket takes without waiting (``MSG_DONTWAIT``)
and leaves the rest of the frame to the writer, which sends it first. Whoever
writes holds the outbox's write turn, so frames never interleave; the relay only
tries for it (it never waits for a socket or its writer). The writer counts what
it took only once it holds the turn, and gives the turn back once that is sent,
so "all put was taken", seen under the turn, means "all put was sent": nothing
the relay writes overtakes a message. Under gevent (no thread to wake) and on
TLS (one SSL object, one writer), and on eventlet's sockets (which wait whatever
the flags), the relay never writes.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .settings import DEFAULTS

logger = logging.getLogger("turbocast.socket")

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
    """A queue of messages for one socket, bounded by bytes, drained in batches by its writer.

    Built on :class:`queue.SimpleQueue`: putting is one C call that never blocks
    and wakes the writer only when it waits (under gevent's monkey-patching, on a
    list and gevent's Event instead: a seventh of the memory of gevent's queue). The
    bound counts the bytes of the messages that wait (as AnyCable and Centrifugo do,
    about 1 MB by default), not their number: a burst of small messages to a client
    that reads is absorbed, while a client that stops reading passes the bound and
    is closed with :data:`CLOSE_OUTBOX_OVERFLOW`. Two counters, each written by one
    thread only (the relay adds, the writer takes away), so queueing takes no lock;
    the write turn (see the module's doc) is tried only where the relay may write now.

    :param max_bytes: how many bytes of messages may wait before the socket is
        closed with :data:`CLOSE_OUTBOX_OVERFLOW`.
    """

    __slots__ = ("max_bytes", "_queue", "_put_bytes", "_taken_bytes", "_closing",
                 "_discard", "_discarded", "_refused", "_turn", "_write", "_rest")  # fmt: skip

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
        # Writing now (see the module's doc): the write turn, the socket's write
        # function, and what of a frame the relay began the socket did not take.
        self._turn: threading.RLock | None = None
        self._write: Callable[[Message], bytes | memoryview] | None = None
        self._rest: bytes | memoryview = b""

    def put(self, message: Message) -> bool:
        """Queue one message, or write it now; ``False`` when the outbox is closing or this
        message overflowed it.

        Only the relay thread puts messages.

        :param message: the message, shared read-only between sockets.
        """
        if self._closing is not None:
            self._refused += 1
            return False
        if self._write is not None and self._wrote_now(message):
            return True
        waiting = self._put_bytes - self._taken_bytes
        self._put_bytes += message.size
        self._queue.put(message)
        # A message larger than the bound still goes to a client that has caught up.
        if waiting and waiting + message.size > self.max_bytes:
            self._discard = True
            self.close(CLOSE_OUTBOX_OVERFLOW, "outbox overflow: client too slow")
            return False
        return True

    def _wrote_now(self, message: Message) -> bool:
        """Write ``message`` on the relay's thread if all put was sent and the writer is idle."""
        turn = self._turn
        if self._put_bytes != self._taken_bytes or turn is None or not turn.acquire(False):
            return False
        try:
            # Under the turn, all put was taken means all put was sent (see the module's doc).
            write = self._write
            if write is None or self._put_bytes != self._taken_bytes or self._closing is not None:
                return False
            try:
                rest = write(message)
            except Exception:  # noqa: BLE001 - the relay goes on; the writer takes over
                logger.exception("the relay could not write to a socket; its writer will")
                self._write = None
                return False
            if rest:  # the socket took part of the frame: the writer sends the rest, first
                self._rest = rest
                self._put_bytes += len(rest)
                self._queue.put(_WAKE)
            return True
        finally:
            turn.release()

    def write_now(self, write: Callable[[Message], bytes | memoryview]) -> None:
        """Let the relay write messages itself while nothing waits and the writer is idle.

        From then on :meth:`drain` returns holding the write turn, which the writer gives
        back with :meth:`end_turn` once it has sent what it took; :meth:`stop_writing_now`
        ends the relay's writes before the socket closes. For a plain socket in threads
        mode only.

        :param write: called under the turn with a message; sends what the socket takes
            without waiting and returns the rest of the frame (``b""``: all of it went,
            or the socket had it already). If it raises, the relay writes no more and
            the message is queued.
        """
        # Re-entrant: the writer may stop writing now while its turn is held.
        self._turn = threading.RLock()
        self._write = write

    def stop_writing_now(self) -> None:
        """No more writes from the relay; once this returns, none is under way.

        The writer calls it before the socket closes, and once it has sent a close frame
        (nothing may follow one), holding its turn or not.
        """
        turn = self._turn
        if turn is not None:
            with turn:
                self._write = None

    @property
    def writing_now(self) -> bool:
        """Whether the relay may write to the socket itself (see :meth:`write_now`)."""
        return self._write is not None

    def take_rest(self) -> bytes | memoryview:
        """What of a frame the relay began the socket did not take; the writer sends it first."""
        rest, self._rest = self._rest, b""
        self._taken_bytes += len(rest)
        return rest

    def end_turn(self, last: bool = False) -> None:
        """The writer has sent what :meth:`drain` gave it: the relay may write again.

        :param last: the turn ends the writing (a failure, a timeout, a close): the relay
            writes no more either. What the turn took may be unsent, so nothing may follow.
        """
        turn = self._turn
        if turn is not None:
            if last:
                self._write = None
            turn.release()

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
        """How many bytes of messages (and of a frame's rest) wait for the writer."""
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

        After :meth:`write_now` it returns holding the write turn, whatever it returns:
        the writer sends :meth:`take_rest` first, then what it got, then calls
        :meth:`end_turn`.

        :param timeout: seconds to wait when nothing is queued (``None``: forever).
        :returns: ``(controls, messages, closing)``; empty lists when the wait timed out.
            Once the outbox is closing, the messages queued before (none after an overflow).
        """
        q = self._queue
        items = q.take(timeout) if isinstance(q, _GreenQueue) else _take_all(q, timeout)
        if self._turn is not None:
            # Before what was taken counts as taken: till it is sent, the relay writes nothing.
            self._turn.acquire()
        closing = self._closing
        messages: list[Message] = [m for m in items if type(m) is not _Control]  # type: ignore[misc]
        controls = [m.event for m in items if type(m) is _Control and m is not _WAKE]
        self._taken_bytes += sum(m.size for m in messages)
        if self._discard and messages:
            self._discarded += len(messages)
            messages = []
        return controls, messages, closing
