"""The bounded queue between the relay thread and one socket's writer.

The relay puts messages here (each shared by every socket it goes to, its
frames encoded once) and never touches a socket; the socket's own handler
thread drains the queue and is the only thread that writes to that socket.
A client that stops reading fills its own outbox and nothing else: when the
bound is passed the outbox drops what it holds and asks the writer to close
the socket with :data:`CLOSE_OUTBOX_OVERFLOW`.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .message import Message

#: Close code sent when a client reads too slowly and its outbox overflows.
CLOSE_OUTBOX_OVERFLOW = 4001


def encode_text_frame(payload: bytes) -> bytes:
    """Encode one unfragmented, unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends.

    Encoding happens once per message in the relay; every socket the message
    goes to writes the same bytes.

    :param payload: the UTF-8 text of the message.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 0x10000:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class Closing(NamedTuple):
    """Why the writer must stop: the close code and reason it sends (``code=None``: send none)."""

    code: int | None
    reason: str


class Outbox:
    """A bounded, thread-safe queue of frames for one socket, drained in batches.

    :param maxsize: how many messages may wait before the socket is closed
        with :data:`CLOSE_OUTBOX_OVERFLOW`.
    """

    __slots__ = ("maxsize", "_items", "_controls", "_cond", "_closing", "dropped")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("an outbox holds at least one frame")
        self.maxsize = maxsize
        self._items: deque[Message] = deque()
        # Control replies (pong, close echo) come from the socket's reader thread;
        # they are few, but they too must go out through the one writer.
        self._controls: deque[object] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closing: Closing | None = None
        #: Frames thrown away when the outbox overflowed.
        self.dropped = 0

    def put(self, message: Message) -> bool:
        """Queue one message; ``False`` when the outbox is closing or just overflowed.

        :param message: the message, shared read-only between sockets.
        """
        with self._cond:
            if self._closing is not None:
                return False
            if len(self._items) >= self.maxsize:
                self.dropped += len(self._items) + 1
                self._items.clear()
                self._closing = Closing(CLOSE_OUTBOX_OVERFLOW, "outbox overflow: client too slow")
                self._cond.notify()
                return False
            self._items.append(message)
            if len(self._items) == 1:
                self._cond.notify()
            return True

    def put_control(self, event: object) -> None:
        """Queue a control event (a wsproto event) for the writer to encode and send.

        :param event: the event, e.g. the response to a client's ping.
        """
        with self._cond:
            self._controls.append(event)
            self._cond.notify()

    def close(self, code: int | None, reason: str = "") -> None:
        """Ask the writer to close the socket; the first reason given wins.

        :param code: the WebSocket close code to send, or ``None`` to send no close frame
            (the peer is gone).
        :param reason: a short text for the close frame and the log.
        """
        with self._cond:
            if self._closing is None:
                self._closing = Closing(code, reason)
            self._cond.notify()

    @property
    def closing(self) -> Closing | None:
        """Why the outbox is closing, or ``None`` while it is open."""
        return self._closing

    def __len__(self) -> int:
        return len(self._items)

    def drain(self, timeout: float | None) -> tuple[list[object], list[Message], Closing | None]:
        """Wait up to ``timeout`` seconds for work; return everything queued at once.

        :param timeout: seconds to wait when nothing is queued (``None``: forever).
        :returns: ``(controls, frames, closing)``; empty lists when the wait timed out.
        """
        with self._cond:
            if not self._items and not self._controls and self._closing is None:
                self._cond.wait(timeout)
            controls: list[object] = list(self._controls)
            self._controls.clear()
            messages: list[Message] = list(self._items)
            self._items.clear()
            return controls, messages, self._closing
