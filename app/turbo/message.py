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
``<id>;t=<µs> <html>``: the message's id, then marks, then a space and the HTML.
``;t=<µs>`` is the publisher's own wall-clock time of the publish (``time.time()``
on its host, in whole microseconds since the epoch; a retry keeps the first
attempt's); it comes last, and a :class:`Message` holds it as :attr:`published`
(seconds). Marks before it say what must not get the message:
``<id>;x=<session id>;t=<µs> <html>`` leaves out one browser session (``exclude=``):
the relay skips the outboxes of that session's sockets; ``<id>;s=<socket id>;t=<µs>
<html>`` leaves out one socket (``exclude_socket=``); both may come, ``x`` first.
The history entry keeps them too (fields ``x``, ``s`` and ``t``), so a replay or a
catch-up skips the same sockets and knows when the message was published. Every
mark is optional (``<id> <html>`` is a message from an older publisher); an unknown
or malformed one (``t`` not digits, a mark without a value) makes the whole payload
HTML alone, without an id, like a payload published by something else.
"""

from __future__ import annotations

from .history import parse_id
from .outbox import deflate_text_frame, encode_text_frame

#: The WebSocket subprotocol of the tagged format.
SUBPROTOCOL = "turbocast.v1"

#: Bytes a message counts for, beyond its HTML: a frame header and the tagged first line.
FRAME_OVERHEAD = 64

#: The kind of the socket's first tagged message, which tells the client its socket id.
IDENTITY_KIND = "i"

#: The stream a gap is answered with: Turbo fetches and renders the page again.
REFRESH_HTML = b'<turbo-stream action="refresh"></turbo-stream>'

#: The marks a payload's head may carry after the id (see the module's description).
_MARKS = frozenset((b"x", b"s", b"t"))


class Message:
    """A message for the sockets of one channel.

    :param channel: the pub/sub channel it came on.
    :param label: the channel's short name for clients (``s``, ``b``, ``u``, ``t:<name>``).
    :param message_id: its history id (``"<ms>-<seq>"``), or ``None`` if it has none.
    :param html: the Turbo Stream HTML, UTF-8.
    :param gap: whether this message stands for messages that can no longer be replayed.
    :param exclude: the session id (ASCII) whose sockets must not get it, or ``None``.
    :param exclude_socket: the socket id (ASCII) that must not get it, or ``None``.
    :param published: the publisher's wall-clock time of the publish, in seconds since the
        epoch, or ``None`` when it is not known (a payload or history entry without ``t``).
    """

    __slots__ = ("channel", "label", "id", "key", "html", "gap", "exclude", "exclude_socket",
                 "published", "size", "_plain", "_tagged", "_plain_deflated",
                 "_tagged_deflated")  # fmt: skip

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
        published: float | None = None,
    ) -> None:
        self.channel = channel
        self.label = label
        self.id = message_id
        self.key: tuple[int, int] | None = parse_id(message_id) if message_id else None
        self.html = html
        self.gap = gap
        self.exclude = exclude
        self.exclude_socket = exclude_socket
        self.published = published
        #: What it counts against an outbox's bound: its HTML and a frame's overhead.
        self.size = len(html) + FRAME_OVERHEAD
        self._plain: bytes | None = None
        self._tagged: bytes | None = None
        self._plain_deflated: bytes | None = None
        self._tagged_deflated: bytes | None = None

    @classmethod
    def from_payload(cls, channel: bytes, label: str, payload: bytes) -> Message:
        """Split what the publisher sent (``b"<id>;t=<µs> <html>"``,
        ``b"<id>;x=<sid>;s=<sock>;t=<µs> <html>"``).

        :param channel: the pub/sub channel.
        :param label: the channel's label.
        :param payload: the pub/sub payload.
        """
        head, sep, html = payload.partition(b" ")
        if sep and head[:1].isdigit():
            message_id, *parts = head.split(b";")
            marks = {name: value for name, _, value in (m.partition(b"=") for m in parts)}
            try:
                if not all(marks.values()) or not marks.keys() <= _MARKS:
                    raise ValueError("a mark without a value, or an unknown one")
                text_id = message_id.decode("ascii")
                x, s, t = marks.get(b"x"), marks.get(b"s"), marks.get(b"t")
                at = published_seconds(t)
                return cls(channel, label, text_id, html, exclude=x, exclude_socket=s, published=at)
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
            self._tagged = encode_text_frame(self._tagged_text())
        return self._tagged

    @property
    def plain_deflated_frame(self) -> bytes:
        """:attr:`plain_frame` for a socket with permessage-deflate: compressed once."""
        if self._plain_deflated is None:
            self._plain_deflated = deflate_text_frame(self.html)
        return self._plain_deflated

    @property
    def tagged_deflated_frame(self) -> bytes:
        """:attr:`tagged_frame` for a socket with permessage-deflate: compressed once."""
        if self._tagged_deflated is None:
            self._tagged_deflated = deflate_text_frame(self._tagged_text())
        return self._tagged_deflated

    def _tagged_text(self) -> bytes:
        kind = b"g " if self.gap else b"m "
        return kind + self.label.encode() + b" " + (self.id or "-").encode() + b"\n" + self.html


def published_seconds(value: bytes | None) -> float | None:
    """A message's publisher time in seconds since the epoch, from its ``t`` (µs, ASCII).

    :param value: ``t`` as a payload's head or a history entry (:data:`history.Entry`)
        holds it, or ``None`` when it has none.
    :raises ValueError: when it is not ASCII digits.
    """
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"a publish time is whole microseconds: {value!r}")
    return int(value) / 1_000_000


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
