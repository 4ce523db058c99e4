"""One message on its way to sockets, and each socket's position in every channel.

The relay makes one :class:`Message` per message Redis delivers; every socket
it goes to shares it, and its frames are encoded once, on first use. A
:class:`Cursor` remembers, for one socket, the id of the last message it got on
each channel, so that history replay, the relay's catch-up after an outage and
live delivery can overlap without anything arriving twice.

Two wire formats, chosen per socket at the handshake:

- plain: the frame is the HTML itself, as Turbo's own ``<turbo-stream-source>`` expects;
- tagged (WebSocket subprotocol ``turbocast.v1``): a first line ``m <label> <id>``
  (or ``g <label> <id>`` for a gap: the history no longer holds what the client
  missed), a newline, then the HTML. The client keeps the last id per label and
  sends it back as ``since=<label>~<id>`` when it reconnects. The socket's very
  first message is ``i <socket id>`` and a newline, without HTML: the socket's own
  id, which the client keeps, sends back as ``socket=<id>`` when it reconnects, and
  puts on the page's requests (``X-Turbocast-Socket``) for ``exclude_socket=``.

What the publisher sends on Redis pub/sub (and what the relay parses) is
``<id> <html>``, or with marks after the id for what must not get it:
``<id>;x=<session id> <html>`` leaves out one browser session (``exclude=``): the
relay skips the outboxes of that session's sockets; ``<id>;s=<socket id> <html>``
leaves out one socket (``exclude_socket=``); both may come, ``x`` first. The
history entry keeps them too (fields ``x`` and ``s``), so a replay or a catch-up
skips the same sockets. A payload without an id (published by something else)
is HTML alone.
"""

from __future__ import annotations

from .history import parse_id
from .outbox import encode_text_frame

#: The WebSocket subprotocol of the tagged format.
SUBPROTOCOL = "turbocast.v1"

#: Bytes a message counts for, beyond its HTML: a frame header and the tagged first line.
FRAME_OVERHEAD = 64

#: The kind of the socket's first tagged message, which tells the client its socket id.
IDENTITY_KIND = "i"

#: The stream a gap is answered with: Turbo fetches and renders the page again.
REFRESH_HTML = b'<turbo-stream action="refresh"></turbo-stream>'


class Message:
    """A message for the sockets of one channel.

    :param channel: the pub/sub channel it came on.
    :param label: the channel's short name for clients (``s``, ``b``, ``u``, ``t:<name>``).
    :param message_id: its history id (``"<ms>-<seq>"``), or ``None`` if it has none.
    :param html: the Turbo Stream HTML, UTF-8.
    :param gap: whether this message stands for messages that can no longer be replayed.
    :param exclude: the session id (ASCII) whose sockets must not get it, or ``None``.
    :param exclude_socket: the socket id (ASCII) that must not get it, or ``None``.
    """

    __slots__ = ("channel", "label", "id", "key", "html", "gap", "exclude", "exclude_socket",
                 "size", "_plain", "_tagged")  # fmt: skip

    def __init__(
        self,
        channel: bytes,
        label: str,
        message_id: str | None,
        html: bytes,
        *,
        gap: bool = False,
        exclude: bytes | None = None,
        exclude_socket: bytes | None = None,
    ) -> None:
        self.channel = channel
        self.label = label
        self.id = message_id
        self.key: tuple[int, int] | None = parse_id(message_id) if message_id else None
        self.html = html
        self.gap = gap
        self.exclude = exclude
        self.exclude_socket = exclude_socket
        #: What it counts against an outbox's bound: its HTML and a frame's overhead.
        self.size = len(html) + FRAME_OVERHEAD
        self._plain: bytes | None = None
        self._tagged: bytes | None = None

    @classmethod
    def from_payload(cls, channel: bytes, label: str, payload: bytes) -> Message:
        """Split what the publisher sent (``b"<id> <html>"``, ``b"<id>;x=<sid>;s=<sock> <html>"``).

        :param channel: the pub/sub channel.
        :param label: the channel's label.
        :param payload: the pub/sub payload.
        """
        head, sep, html = payload.partition(b" ")
        if sep and head[:1].isdigit():
            message_id, *marks = head.split(b";")
            excluded = {name: value for name, _, value in (m.partition(b"=") for m in marks)}
            try:
                if not all(excluded.values()) or not excluded.keys() <= {b"x", b"s"}:
                    raise ValueError("an exclusion without an id, or of something unknown")
                text_id = message_id.decode("ascii")
                x, s = excluded.get(b"x"), excluded.get(b"s")
                return cls(channel, label, text_id, html, exclude=x, exclude_socket=s)
            except (ValueError, UnicodeDecodeError):
                pass
        # Published by something other than turbocast's Publisher: no id, no history.
        return cls(channel, label, None, payload)

    @property
    def plain_frame(self) -> bytes:
        """The WebSocket frame of the bare HTML."""
        if self._plain is None:
            self._plain = encode_text_frame(self.html)
        return self._plain

    @property
    def tagged_frame(self) -> bytes:
        """The WebSocket frame in the ``turbocast.v1`` format."""
        if self._tagged is None:
            kind = b"g " if self.gap else b"m "
            head = kind + self.label.encode() + b" " + (self.id or "-").encode() + b"\n"
            self._tagged = encode_text_frame(head + self.html)
        return self._tagged


def identity_frame(socket_id: str) -> bytes:
    """The WebSocket frame that tells a ``turbocast.v1`` client its socket id: ``i <id>``.

    :param socket_id: the socket's id (:func:`turbocast.channels.new_socket_id`).
    """
    return encode_text_frame(f"{IDENTITY_KIND} {socket_id}\n".encode("ascii"))


class Cursor:
    """One socket's position in each of its channels: the last message id it was sent."""

    __slots__ = ("marks",)

    def __init__(self) -> None:
        self.marks: dict[bytes, tuple[int, int]] = {}

    def admit(self, message: Message) -> bool:
        """Whether the socket should get ``message`` (it is newer than what it has); advance.

        :param message: the candidate.
        """
        key = message.key
        if key is None:
            return True
        mark = self.marks.get(message.channel)
        # A gap carries the newest id there is, which the socket may have already.
        if mark is not None and (key < mark or (key == mark and not message.gap)):
            return False
        self.marks[message.channel] = key
        return True
