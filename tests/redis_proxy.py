"""A small TCP proxy in front of Redis that a test can stall, resume, or make lose one reply.

Redis outages in real deployments are rarely a clean refusal: a dead network or
a hung host leaves connections open with nothing coming through, and a reply
can be lost after Redis did the work. The proxy stands between the code under
test and the test's Redis and does exactly that, on cue:

- :meth:`RedisProxy.pause` forwards nothing, either way, on any connection
  (new ones are still accepted: the kernel would complete their handshakes anyway);
- :meth:`RedisProxy.resume` forwards again, including what waited meanwhile;
- :meth:`RedisProxy.drop_reply` swallows the reply to the next command with a
  given name (``EVALSHA``): Redis ran it, the client never hears back.

One thread serves every connection (``selectors``), commands and replies are
forwarded whole (each direction is split into RESP values, so a reply can be
matched to the command it answers), and :meth:`RedisProxy.stop` closes everything.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_CRLF = b"\r\n"
_LINE_TYPES = frozenset(b"+-:_,#(")  # RESP2 and RESP3 values that are one line
_BULK_TYPES = frozenset(b"$!=")  # a length line, then that many bytes
_AGGREGATE_TYPES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}


class ProtocolError(Exception):
    """The bytes on a connection are not RESP: the proxy gives up on that connection."""


def value_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Where the RESP value starting at ``pos`` ends, or ``None`` when it is not all there yet.

    :param buf: bytes received so far on one direction of a connection.
    :param pos: where the value starts.
    :raises ProtocolError: when the bytes are not RESP.
    """
    line_end = buf.find(_CRLF, pos)
    if line_end < 0:
        return None
    kind = buf[pos]
    after = line_end + 2
    if kind in _LINE_TYPES:
        return after
    try:
        length = int(buf[pos + 1 : line_end])
    except ValueError:
        raise ProtocolError(f"bad RESP length line {bytes(buf[pos:line_end])!r}") from None
    if kind in _BULK_TYPES:
        if length < 0:
            return after
        bulk_end = after + length + 2
        return bulk_end if len(buf) >= bulk_end else None
    per_item = _AGGREGATE_TYPES.get(kind)
    if per_item is None:
        raise ProtocolError(f"unknown RESP type {bytes([kind])!r}")
    end = after
    for _ in range(max(length, 0) * per_item):
        item_end = value_end(buf, end)
        if item_end is None:
            return None
        end = item_end
    if kind == ord("|"):  # an attribute annotates the value that follows it
        return value_end(buf, end)
    return end


def command_name(buf: bytes | bytearray, start: int, end: int) -> bytes:
    """The upper-cased name of the command (a RESP array of bulk strings) in ``buf[start:end]``."""
    if buf[start] != ord("*"):
        return b""
    head = buf.find(_CRLF, start, end)
    name_len_end = buf.find(_CRLF, head + 2, end)
    if head < 0 or name_len_end < 0 or buf[head + 2] != ord("$"):
        return b""
    length = int(buf[head + 3 : name_len_end])
    return bytes(buf[name_len_end + 2 : name_len_end + 2 + length]).upper()


@dataclass
class _Link:
    """One client connection and the proxy's own connection to Redis for it."""

    client: socket.socket
    upstream: socket.socket
    from_client: bytearray = field(default_factory=bytearray)
    from_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    to_upstream: bytearray = field(default_factory=bytearray)
    #: For each command forwarded and not yet answered: whether to swallow its reply.
    pending: collections.deque[bool] = field(default_factory=collections.deque)
    eof: bool = False

    def peer_of(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


class RedisProxy:
    """A threaded TCP proxy to one Redis server, for failure tests.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with RedisProxy(redis_url) as proxy:
            app_url = proxy.url      # the same database, through the proxy
            proxy.pause(); ...; proxy.resume()

    :param redis_url: the real Redis (``redis://host:port/db``).
    :param max_connections: connections held at once; more are closed at accept.
    """

    def __init__(self, redis_url: str, max_connections: int = 128) -> None:
        parts = urlsplit(redis_url)
        if parts.scheme != "redis":
            raise ValueError(f"the proxy speaks plain TCP: {redis_url!r}")
        if parts.port is None:
            raise ValueError(f"name the upstream Redis's port: {redis_url!r}")
        self._parts = parts
        self._upstream = (parts.hostname or "127.0.0.1", parts.port)
        self.max_connections = max_connections
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._links: dict[socket.socket, _Link] = {}
        self._paused = False
        self._stopping = threading.Event()
        self._drop: dict[bytes, int] = {}
        self._thread: threading.Thread | None = None
        #: How many connections the proxy accepted (and refused, over ``max_connections``).
        self.accepted = 0
        self.refused = 0
        #: How many replies :meth:`drop_reply` swallowed.
        self.dropped = 0
        #: How many commands of each name went through to Redis.
        self.commands: collections.Counter[bytes] = collections.Counter()

    @property
    def url(self) -> str:
        """The Redis URL of the proxy: the same database, credentials and options."""
        netloc = f"127.0.0.1:{self.port}"
        if "@" in self._parts.netloc:
            netloc = self._parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        return self._parts._replace(netloc=netloc).geturl()

    # -- control (any thread) ------------------------------------------------------

    def start(self) -> RedisProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="redis-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, and end the proxy's thread."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError("the Redis proxy's thread did not stop")
        for link in list(self._links.values()):
            self._close(link)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def __enter__(self) -> RedisProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self) -> None:
        """Forward nothing, in either direction, until :meth:`resume` (a dead network)."""
        with self._lock:
            self._paused = True
        self._wake()

    def resume(self) -> None:
        """Forward again, starting with what waited during the pause."""
        with self._lock:
            self._paused = False
        self._wake()

    def drop_reply(self, command: str | bytes, count: int = 1) -> None:
        """Swallow the replies to the next ``count`` commands named ``command``.

        Redis still runs the command; the connection stays open, so the client
        sees nothing come back (its read times out).

        :param command: the command's name, such as ``"EVALSHA"``.
        :param count: how many such commands lose their reply.
        """
        name = command.encode() if isinstance(command, str) else command
        with self._lock:
            self._drop[name.upper()] = self._drop.get(name.upper(), 0) + count

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        with self._lock:
            return len({id(link) for link in self._links.values()})

    def _wake(self) -> None:
        # (BlockingIOError: a wake-up is already pending; OSError: the proxy is stopping.)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the proxy's thread ------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._update_interest()
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(4096):
                            pass
                elif sock is self._listener:
                    self._accept()
                elif isinstance(sock, socket.socket):
                    link = self._links.get(sock)
                    if link is not None:
                        self._service(link, sock)

    def _update_interest(self) -> None:
        # Paused: read nothing and write nothing, so bytes wait in the kernels' buffers.
        with self._lock:
            paused = self._paused
        for sock, link in list(self._links.items()):
            outgoing = link.to_client if sock is link.client else link.to_upstream
            events = 0
            if not paused:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if outgoing else 0)
            try:
                key = self._selector.get_key(sock)
            except KeyError:
                if events:
                    self._selector.register(sock, events)
                continue
            if not events:
                self._selector.unregister(sock)
            elif key.events != events:
                self._selector.modify(sock, events)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            if self.connections >= self.max_connections:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream)
            with self._lock:
                self._links[client] = link
                self._links[upstream] = link
            self.accepted += 1

    def _service(self, link: _Link, sock: socket.socket) -> None:
        with self._lock:
            if self._paused:
                return  # paused after select() returned: touch nothing
        try:
            self._read(link, sock)
            self._flush(link)
        except (OSError, ProtocolError):
            self._close(link)
            return
        if link.eof and not link.to_client and not link.to_upstream:
            self._close(link)

    def _read(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            link.eof = True  # forward what is whole, then close both sides
            return
        if sock is link.client:
            link.from_client += data
            self._forward_commands(link)
        else:
            link.from_upstream += data
            self._forward_replies(link)

    def _forward_commands(self, link: _Link) -> None:
        buf = link.from_client
        pos = 0
        while pos < len(buf):
            end = value_end(buf, pos)
            if end is None:
                break
            name = command_name(buf, pos, end)
            with self._lock:
                drop = self._drop.get(name, 0) > 0
                if drop:
                    self._drop[name] -= 1
            self.commands[name] += 1
            link.pending.append(drop)
            link.to_upstream += buf[pos:end]
            pos = end
        del buf[:pos]

    def _forward_replies(self, link: _Link) -> None:
        buf = link.from_upstream
        pos = 0
        while pos < len(buf):
            end = value_end(buf, pos)
            if end is None:
                break
            # A subscribed connection gets more values than it sent commands: those
            # extra ones (messages) answer nothing and are always forwarded.
            drop = link.pending.popleft() if link.pending else False
            if drop:
                self.dropped += 1
            else:
                link.to_client += buf[pos:end]
            pos = end
        del buf[:pos]

    def _flush(self, link: _Link) -> None:
        for sock, outgoing in ((link.client, link.to_client), (link.upstream, link.to_upstream)):
            if outgoing:
                try:
                    sent = sock.send(outgoing)
                except BlockingIOError:
                    continue
                del outgoing[:sent]

    def _close(self, link: _Link) -> None:
        with self._lock:
            for sock in (link.client, link.upstream):
                self._links.pop(sock, None)
        for sock in (link.client, link.upstream):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
