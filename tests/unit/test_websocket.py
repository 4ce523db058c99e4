"""turbocast.connection: one WebSocket on real sockets, its handshake, reader and one writer."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from itertools import takewhile
from typing import Any

import pytest
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.support import from_relay, wait_for
from turbocast import connection
from turbocast.connection import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    WebSocket,
    socket_of,
)
from turbocast.errors import HandshakeError, TurboError
from turbocast.message import SUBPROTOCOL, Message
from turbocast.outbox import Outbox
from turbocast.readers import Readers, readers

SEND_TIMEOUT = 5.0
DEADLINE = 5.0


def _message(n: int, html: bytes | None = None) -> Message:
    return Message(b"turbo:session:x", "s", f"{n}-0", html or f"<p>{n}</p>".encode())


class Peer:
    """The browser's end: a wsproto client on a real socket, read with a deadline."""

    def __init__(self, sock: Any, ws: WSConnection) -> None:
        self.sock = sock
        self.ws = ws
        self.events: list[Any] = []
        self.eof = False

    def send(self, event: Any) -> None:
        self.sock.sendall(self.ws.send(event))

    def next(self, timeout: float = 5.0) -> Any:
        """The next event; ``None`` at EOF; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.events:
            if self.eof:
                return None
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"nothing from the server within {timeout}s") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.pop(0)

    def next_of(self, kind: type, timeout: float = 5.0) -> Any:
        """The next event of ``kind``, skipping others (pings, say)."""
        while True:
            event = self.next(timeout)
            if event is None or isinstance(event, kind):
                return event

    def text(self, timeout: float = 5.0) -> str:
        """The next whole text message (wsproto hands a long one over in parts)."""
        parts = []
        while True:
            event = self.next_of(TextMessage, timeout)
            assert event is not None, "the server hung up"
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts)

    def texts(self, count: int) -> list[str]:
        return [self.text() for _ in range(count)]


def upgrade_environ(
    sock: Any,
    *,
    server: str = "gunicorn.socket",
    subprotocols: tuple[str, ...] = (),
    deflate: bool = False,
) -> tuple[WSConnection, dict[str, Any]]:
    """A client's upgrade request as a WSGI server would hand it over, with its client."""
    client = WSConnection(ConnectionType.CLIENT)
    raw = client.send(
        Request(
            host="localhost",
            target="/turbo-stream",
            subprotocols=list(subprotocols),
            extensions=[PerMessageDeflate()] if deflate else [],
        )
    )
    request_line, *lines = raw.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ")
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, server: sock}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
    return client, environ


def make_ws(environ: dict[str, Any], outbox: Outbox | None = None, **limits: Any) -> WebSocket:
    options: dict[str, Any] = {
        "send_timeout": SEND_TIMEOUT,
        "max_incoming_bytes": 4096,
        "max_incoming_rate": 50,
    }
    options.update(limits)
    return WebSocket(environ, outbox if outbox is not None else Outbox(1 << 20), **options)


@pytest.fixture(autouse=True)
def short_close_wait(monkeypatch):
    # Test peers seldom answer a close frame: wait for them less than 2 s.
    monkeypatch.setattr(connection, "_CLOSE_WAIT", 0.3)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


@pytest.fixture
def slow_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A socketpair with small buffers: a peer that does not read soon stops the sends."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield server, client
    server.close()
    client.close()


def opened(
    server_sock: Any, client_sock: Any, outbox: Outbox | None = None, **options: Any
) -> tuple[WebSocket, Peer]:
    """A socket through its handshake: accepted, the peer has its 101."""
    subprotocols = options.pop("subprotocols", ())
    server = options.pop("server", "gunicorn.socket")
    client, environ = upgrade_environ(server_sock, server=server, subprotocols=subprotocols)
    ws = make_ws(environ, outbox, **options)
    ws.accept()
    peer = Peer(client_sock, client)
    assert isinstance(peer.next(), AcceptConnection)
    return ws, peer


class Serving:
    """serve() in a thread of its own, as the handler thread would run it."""

    def __init__(
        self, ws: WebSocket, replay: list[Message] | None = None, socket_id: str | None = None
    ) -> None:
        self.ws = ws
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.socket_id = socket_id
        self.thread = threading.Thread(target=self._run, args=(replay or [],), daemon=True)
        self.thread.start()

    def _run(self, replay: list[Message]) -> None:
        try:
            self.reason = self.ws.serve(replay, socket_id=self.socket_id)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc

    def result(self, timeout: float = 10.0) -> str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve() did not return"
        return self.reason


# -- the handshake ------------------------------------------------------------------------


def test_a_good_upgrade_is_parsed_and_nothing_is_sent_before_accept(pair):
    server_sock, client_sock = pair
    _, environ = upgrade_environ(server_sock, server="werkzeug.socket")

    ws = make_ws(environ)

    assert ws.mode == "werkzeug"
    assert ws.tagged is False
    client_sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client_sock.recv(1)


@pytest.mark.parametrize("version", ["8", None])
def test_a_wrong_or_missing_version_is_refused_with_400_and_the_version_spoken(pair, version):
    _, environ = upgrade_environ(pair[0])
    if version is None:
        del environ["HTTP_SEC_WEBSOCKET_VERSION"]
    else:
        environ["HTTP_SEC_WEBSOCKET_VERSION"] = version

    with pytest.raises(HandshakeError) as refused:
        make_ws(environ)

    assert isinstance(refused.value, TurboError)
    assert refused.value.status == 400
    assert refused.value.headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda env: env.pop("HTTP_SEC_WEBSOCKET_KEY"), id="no key"),
        pytest.param(lambda env: env.update(HTTP_SEC_WEBSOCKET_KEY="c2hvcnQ="), id="short key"),
        pytest.param(lambda env: env.update(HTTP_SEC_WEBSOCKET_KEY="not base64!"), id="bad key"),
        pytest.param(lambda env: env.pop("HTTP_UPGRADE"), id="no upgrade"),
        pytest.param(lambda env: env.pop("HTTP_CONNECTION"), id="no connection"),
        pytest.param(lambda env: env.update(REQUEST_METHOD="POST"), id="post"),
        pytest.param(lambda env: env.update(HTTP_X_BAD="a\x00b"), id="bad header"),
    ],
)
def test_a_malformed_upgrade_is_refused_with_400_and_nothing_sent(pair, change):
    server_sock, client_sock = pair
    _, environ = upgrade_environ(server_sock)
    change(environ)

    with pytest.raises(HandshakeError) as refused:
        make_ws(environ)

    assert refused.value.status == 400
    client_sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        client_sock.recv(1)


def test_a_server_that_does_not_give_its_socket_is_a_500(pair):
    _, environ = upgrade_environ(pair[0])
    del environ["gunicorn.socket"]

    with pytest.raises(HandshakeError) as refused:
        make_ws(environ)

    assert refused.value.status == 500


def test_the_socket_is_found_where_each_server_puts_it(pair):
    sock = pair[0]
    assert socket_of({"werkzeug.socket": sock}) == (sock, "werkzeug")
    assert socket_of({"gunicorn.socket": sock}) == (sock, "gunicorn")


def test_gevents_own_server_is_reached_through_its_input_descriptor(pair):
    # For an upgrade gevent.pywsgi hands over the connection's file as wsgi.input.
    rfile = pair[0].makefile("rb")
    environ = {"SERVER_SOFTWARE": "gevent/26.9", "wsgi.input": rfile, "wsgi.url_scheme": "http"}

    sock, mode = socket_of(environ)
    try:
        assert mode == "gevent"
        assert type(sock).__module__.startswith("gevent")
        assert sock.fileno() != pair[0].fileno()
        sock.sendall(b"same connection")
        assert pair[1].recv(64) == b"same connection"
    finally:
        sock.close()
        rfile.close()

    with pytest.raises(HandshakeError):  # through TLS, the descriptor alone is no use
        socket_of({**environ, "wsgi.url_scheme": "https"})


def test_accept_chooses_turbocast_v1_when_offered_and_no_extension(pair):
    server_sock, client_sock = pair
    client, environ = upgrade_environ(
        server_sock, subprotocols=("other", SUBPROTOCOL), deflate=True
    )
    ws = make_ws(environ)

    ws.accept()

    accepted = Peer(client_sock, client).next()
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == SUBPROTOCOL
    assert accepted.extensions == []
    assert ws.tagged is True
    ws.abort(1000, "done")


def test_accept_chooses_no_subprotocol_when_turbocast_v1_is_not_offered(pair):
    ws, peer = opened(*pair, subprotocols=("other",))
    assert ws.subprotocol is None
    assert ws.tagged is False
    ws.abort(1000, "done")


def test_accept_is_called_once(pair):
    ws, _ = opened(*pair)
    with pytest.raises(RuntimeError):
        ws.accept()
    ws.abort(1000, "done")


# -- the writer -----------------------------------------------------------------------------


def test_serve_sends_the_replay_then_the_outbox_once_each(pair):
    outbox = Outbox(1 << 20)
    ws, peer = opened(pair[0], pair[1], outbox)
    replay = [_message(1), _message(2)]
    outbox.put(_message(2))  # in both: sent once
    outbox.put(_message(3))

    serving = Serving(ws, replay)

    assert peer.texts(3) == ["<p>1</p>", "<p>2</p>", "<p>3</p>"]
    assert replay == []
    outbox.close(1000, "bye")
    assert serving.result() == "bye"
    close = peer.next_of(CloseConnection)
    assert close.code == 1000


def test_a_tagged_socket_gets_the_label_and_id_first(pair):
    outbox = Outbox(1 << 20)
    ws, peer = opened(pair[0], pair[1], outbox, subprotocols=(SUBPROTOCOL,))
    outbox.put(_message(7))
    serving = Serving(ws)

    assert peer.texts(1) == ["m s 7-0\n<p>7</p>"]
    outbox.close(1001, "going away")
    assert serving.result() == "going away"


def test_a_tagged_socket_is_told_its_id_first_then_gets_the_replay(pair):
    outbox = Outbox(1 << 20)
    ws, peer = opened(pair[0], pair[1], outbox, subprotocols=(SUBPROTOCOL,))
    serving = Serving(ws, [_message(7)], socket_id="Sock3tSock3tSock")

    assert peer.texts(2) == ["i Sock3tSock3tSock\n", "m s 7-0\n<p>7</p>"]
    outbox.close(1001, "going away")
    assert serving.result() == "going away"


def test_a_plain_socket_is_not_told_its_id(pair):
    outbox = Outbox(1 << 20)
    ws, peer = opened(pair[0], pair[1], outbox)
    serving = Serving(ws, [_message(7)], socket_id="Sock3tSock3tSock")

    assert peer.texts(1) == ["<p>7</p>"]
    outbox.close(1001, "going away")
    assert serving.result() == "going away"


def test_a_client_close_is_echoed_through_the_writer_and_ends_serve(pair):
    ws, peer = opened(*pair)
    serving = Serving(ws)

    peer.send(CloseConnection(code=1000, reason="page closed"))

    echo = peer.next_of(CloseConnection)
    assert echo.code == 1000
    assert serving.result() == "client closed (1000)"
    assert peer.next() is None  # then the server hangs up
    assert ws not in readers()


def test_a_client_ping_is_answered_by_the_writer(pair):
    ws, peer = opened(*pair)
    serving = Serving(ws)

    peer.send(Ping(payload=b"are you there"))

    assert peer.next_of(Pong).payload == b"are you there"
    ws.outbox.close(1000, "done")
    serving.result()


def test_heartbeats_ping_and_a_peer_that_answers_stays(pair):
    ws, peer = opened(*pair)
    serving = Serving(ws)
    for _ in range(3):
        ws.outbox.beat()
        ping = peer.next_of(Ping)
        peer.send(ping.response())
        wait_for(lambda: ws._pong_received, timeout=5)
    ws.outbox.put(_message(1))
    assert peer.texts(1) == ["<p>1</p>"]
    ws.outbox.close(1000, "done")
    assert serving.result() == "done"


def test_a_peer_that_did_not_pong_the_last_heartbeat_is_dropped(pair):
    ws, peer = opened(*pair)
    serving = Serving(ws)

    ws.outbox.beat()
    assert isinstance(peer.next_of(Ping), Ping)  # and not answered
    ws.outbox.beat()

    assert serving.result() == "heartbeat timeout: no pong"
    assert ws.outbox.closing is None  # the reader did not rewrite why it ended
    assert ws.sock.fileno() == -1


def test_serve_ends_when_the_peer_hangs_up_and_cleans_up(pair):
    ws, peer = opened(*pair)
    serving = Serving(ws)

    peer.sock.shutdown(socket.SHUT_RDWR)

    assert serving.result() == "peer disconnected"
    assert ws not in readers()
    assert ws.sock.fileno() == -1


def test_a_peer_that_stops_reading_is_dropped_after_the_send_timeout():
    server_sock, client_sock = socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        outbox = Outbox(1 << 30)
        ws, _ = opened(server_sock, client_sock, outbox, send_timeout=0.3)
        for n in range(200):
            outbox.put(_message(n, b"x" * 8192))
        started = time.monotonic()
        serving = Serving(ws)

        assert serving.result() == "write failed: BlockingIOError"
        assert time.monotonic() - started < 5
    finally:
        server_sock.close()
        client_sock.close()


# -- the relay writing now (a plain socket in threads mode) --------------------------------


def live(ws: WebSocket, replay: list[Message] | None = None) -> Serving:
    """serve() in its thread, past its replay: the relay may write now."""
    serving = Serving(ws, replay)
    wait_for(lambda: ws.outbox.writing_now, timeout=DEADLINE)
    return serving


def test_an_idle_writer_lets_the_relay_write_without_waking_it(pair):
    ws, peer = opened(*pair)
    serving = live(ws, [_message(1)])
    assert peer.texts(1) == ["<p>1</p>"]

    assert ws.outbox.put(_message(2))
    # Written by the putting thread: nothing was queued for the writer.
    assert len(ws.outbox) == 0 and ws.outbox.pending_bytes == 0
    assert peer.texts(1) == ["<p>2</p>"]
    assert ws.outbox.put(_message(2)) and ws.outbox.pending_bytes == 0  # had it: not again
    ws.outbox.put(_message(3))
    assert peer.texts(1) == ["<p>3</p>"]
    ws.outbox.close(1000, "done")
    assert serving.result() == "done"


def test_the_relay_queues_while_the_writer_is_writing(slow_pair):
    ws, peer = opened(*slow_pair)
    serving = live(ws)
    big = "x" * 300_000
    assert from_relay(ws.outbox, _message(1, big.encode()))  # the socket takes part
    # The writer took the rest in its turn and waits in its send for the peer.
    wait_for(lambda: len(ws.outbox) == 0 and ws.outbox.pending_bytes == 0, timeout=DEADLINE)

    assert from_relay(ws.outbox, _message(2))

    assert len(ws.outbox) == 1  # queued behind the writer's turn, not written
    assert peer.text() == big
    assert peer.texts(1) == ["<p>2</p>"]
    ws.outbox.close(1000, "done")
    assert serving.result() == "done"


def test_a_frame_the_socket_took_part_of_is_finished_by_the_writer_before_anything_else(
    slow_pair,
):
    ws, peer = opened(*slow_pair)
    serving = live(ws)
    big = "x" * 300_000

    putting = threading.Thread(
        target=lambda: [
            ws.outbox.put(_message(n, (big if n == 1 else f"<p>{n}</p>").encode()))
            for n in range(1, 4)
        ],  # fmt: skip
    )
    putting.start()
    putting.join(DEADLINE)  # the relay never waits for the peer to read
    assert not putting.is_alive()
    ws.outbox.beat()  # a ping to send: never inside the rest of the first frame

    assert peer.text() == big  # (a ping inside it would fail the parser)
    assert peer.texts(2) == ["<p>2</p>", "<p>3</p>"]
    ws.outbox.close(1000, "done")
    assert serving.result() == "done"


def test_the_rest_of_a_frame_is_a_view_of_the_shared_frame_not_a_copy(slow_pair):
    ws, _ = opened(*slow_pair)
    ws.outbox.write_now(ws._write_now)  # as serve() does once live (no writer here)
    big = _message(1, b"x" * 300_000)

    assert from_relay(ws.outbox, big)

    rest = ws.outbox.take_rest()
    assert isinstance(rest, memoryview) and rest.obj is big.plain_frame
    assert 0 < len(rest) < len(big.plain_frame)
    ws.abort(1000, "done")


class EventletLike(socket.socket):
    """Stands in for eventlet's GreenSocket, which waits for the peer whatever the flags."""


EventletLike.__module__ = "eventlet.greenio.base"


class FailingSend(socket.socket):
    """The standard library's socket, but its non-waiting send fails unexpectedly."""

    def send(self, data: Any, flags: int = 0) -> int:
        if flags:
            raise RuntimeError("boom")
        return super().send(data, flags)


FailingSend.__module__ = "socket"


def test_a_socket_that_would_wait_whatever_the_flags_is_never_written_by_the_relay():
    server_sock, client_sock = socket.socketpair()
    green = EventletLike(fileno=server_sock.detach())
    try:
        ws, peer = opened(green, client_sock)
        serving = Serving(ws, [_message(1)])
        assert peer.texts(1) == ["<p>1</p>"]  # the writer is live

        ws.outbox.put(_message(2))
        assert peer.texts(1) == ["<p>2</p>"]
        assert not ws.outbox.writing_now
        ws.outbox.close(1000, "done")
        assert serving.result() == "done"
    finally:
        green.close()
        client_sock.close()


def test_a_relay_write_that_fails_unexpectedly_leaves_the_message_to_the_writer(caplog):
    server_sock, client_sock = socket.socketpair()
    failing = FailingSend(fileno=server_sock.detach())
    try:
        ws, peer = opened(failing, client_sock)
        serving = live(ws)

        assert ws.outbox.put(_message(1))  # admitted by the socket's cursor, then not sent

        assert peer.texts(1) == ["<p>1</p>"]  # sent by the writer: not lost
        assert "could not write" in caplog.text
        ws.outbox.close(1000, "done")
        assert serving.result() == "done"
    finally:
        failing.close()
        client_sock.close()


def test_frames_from_the_relay_and_the_writer_never_interleave_or_overtake():
    # A slow reader (small buffers) and pings: the relay writes now, leaves rests and
    # queues while the writer answers pings and catches up, all at once.
    server_sock, client_sock = socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    count = 3000
    try:
        ws, peer = opened(server_sock, client_sock, Outbox(1 << 30), max_incoming_rate=10**6)
        serving = live(ws)

        def relay() -> None:
            for n in range(count):
                ws.outbox.put(_message(n, f"<p>{n}</p>{'y' * (n % 7 * 1500)}".encode()))

        putting = threading.Thread(target=relay)
        putting.start()
        for n in range(count):
            if n % 100 == 0:
                peer.send(Ping(payload=str(n).encode()))  # a pong to answer, from the writer
            text = peer.text()  # a broken frame would fail the parser
            assert text.split("</p>")[0] == f"<p>{n}"
        putting.join(DEADLINE)
        assert not putting.is_alive()
        ws.outbox.close(1000, "done")
        rest = iter(peer.next, None)  # to the close: the last pongs, and nothing twice
        assert {type(e) for e in takewhile(lambda e: not isinstance(e, CloseConnection), rest)} <= {
            Pong
        }
        assert serving.result() == "done"
    finally:
        server_sock.close()
        client_sock.close()


def test_after_a_close_echo_the_relay_writes_nothing(pair):
    ws, peer = opened(*pair)
    serving = live(ws)

    # The reader's first step on a client's close (the echo), before it marks the outbox
    # closing: the relay still puts, and must not write after the close frame.
    echo = CloseConnection(code=1000, reason="page closed").response()
    ws.outbox.put_control(echo)
    raw = b""
    peer.sock.settimeout(DEADLINE)
    while b"\x88" not in raw:  # the echo (raw: wsproto's client drops frames after a close)
        raw += peer.sock.recv(4096)
    ws.outbox.put(_message(1))
    ws.outbox.close(None, "client closed (1000)")

    assert serving.result() == "client closed (1000)"
    while chunk := peer.sock.recv(4096):  # to the server's hang-up
        raw += chunk
    assert raw == Connection(ConnectionType.SERVER).send(echo)  # the echo, and nothing after it


class LatePut(Outbox):
    """An outbox whose relay puts ``late`` just as the writer gives its turn back."""

    late: Message | None = None
    turns = 0

    def end_turn(self, last: bool = False) -> None:
        super().end_turn(last)
        late, self.late = self.late, None
        if late is not None:
            self.put(late)
        self.turns += 1


def test_the_turn_that_ends_the_writing_ends_the_relays_writes_too(pair):
    # The turn that gives up on a peer may have taken messages it never sent: a message
    # written after them would skip them, and the page would resume past them.
    outbox = LatePut(1 << 20)
    ws, peer = opened(pair[0], pair[1], outbox)
    serving = live(ws)
    outbox.beat()
    peer.next_of(Ping)  # not answered
    wait_for(lambda: outbox.turns == 1, timeout=DEADLINE)  # the ping's turn is over

    outbox.late = _message(2)
    outbox.beat()

    assert serving.result() == "heartbeat timeout: no pong"
    assert outbox.late is None and len(outbox) == 1  # queued, not written
    assert peer.next_of(TextMessage) is None


def test_once_serve_ended_the_relay_never_touches_the_socket(pair):
    ws, peer = opened(*pair)
    serving = live(ws)
    ws.outbox.beat()
    peer.next_of(Ping)
    ws.outbox.beat()  # not answered: the writer gives up, closing nothing in the outbox
    assert serving.result() == "heartbeat timeout: no pong"
    assert ws.outbox.closing is None and not ws.outbox.writing_now

    ws.outbox.put(_message(1))  # queued (the relay detaches it soon): the descriptor may be reused

    assert len(ws.outbox) == 1


def test_serve_sends_1011_when_it_fails_and_still_cleans_up(pair, monkeypatch):
    ws, peer = opened(*pair)

    def broken(messages):
        raise RuntimeError("boom")

    monkeypatch.setattr(ws, "_write", broken)
    ws.outbox.put(_message(1))
    serving = Serving(ws)

    serving.result()
    assert isinstance(serving.error, RuntimeError)
    assert peer.next_of(CloseConnection).code == CLOSE_INTERNAL_ERROR
    assert ws not in readers()
    ws.abort(CLOSE_INTERNAL_ERROR, "again")  # the endpoint's abort afterwards: nothing


# -- what clients send ---------------------------------------------------------------------


def test_a_message_larger_than_the_limit_is_closed_with_1009(pair):
    ws, peer = opened(*pair, max_incoming_bytes=100)
    serving = Serving(ws)

    peer.send(TextMessage(data="x" * 101))

    assert peer.next_of(CloseConnection).code == CLOSE_MESSAGE_TOO_BIG
    assert serving.result() == "message too big"


def test_a_large_message_is_refused_before_it_has_all_arrived(pair):
    ws, peer = opened(*pair, max_incoming_bytes=100)
    serving = Serving(ws)

    peer.send(BytesMessage(data=b"x" * 80, message_finished=False))
    peer.send(BytesMessage(data=b"x" * 80, message_finished=False))

    assert peer.next_of(CloseConnection).code == CLOSE_MESSAGE_TOO_BIG
    serving.result()


def test_small_messages_are_ignored_and_a_flood_is_closed_with_1008(pair):
    ws, peer = opened(*pair, max_incoming_rate=5)
    serving = Serving(ws)
    for _ in range(5):
        peer.send(TextMessage(data="hi"))
    ws.outbox.put(_message(1))
    assert peer.texts(1) == ["<p>1</p>"]  # still open

    peer.send(TextMessage(data="hi"))

    assert peer.next_of(CloseConnection).code == CLOSE_POLICY_VIOLATION
    assert serving.result() == "too many messages from client"


def test_garbage_from_the_client_closes_the_socket(pair):
    ws, peer = opened(*pair)
    serving = Serving(ws)

    peer.sock.sendall(b"\xff" * 32)  # not a masked frame

    assert (serving.result() or "").startswith("client closed (1002)")
    close = peer.next_of(CloseConnection)
    assert close is None or close.code == 1002


# -- abort and failures after the 101 --------------------------------------------------------


def test_abort_sends_one_close_frame_unregisters_and_closes(pair):
    ws, peer = opened(*pair)
    assert ws in readers()

    ws.abort(CLOSE_INTERNAL_ERROR, "internal error")
    ws.abort(CLOSE_INTERNAL_ERROR, "internal error")

    close = peer.next_of(CloseConnection)
    assert (close.code, close.reason) == (CLOSE_INTERNAL_ERROR, "internal error")
    assert peer.next() is None
    assert ws not in readers()
    assert ws.sock.fileno() == -1
    with pytest.raises(RuntimeError):
        ws.serve([])  # nothing left to serve


def test_abort_before_accept_sends_no_frame(pair):
    server_sock, client_sock = pair
    _, environ = upgrade_environ(server_sock)
    ws = make_ws(environ)

    ws.abort(CLOSE_INTERNAL_ERROR, "internal error")

    client_sock.settimeout(2)
    assert client_sock.recv(64) == b""  # EOF: no 101, no close frame


def test_a_failure_right_after_the_101_closes_with_1011_and_leaves_no_registration(
    pair, monkeypatch
):
    server_sock, client_sock = pair
    client, environ = upgrade_environ(server_sock)
    ws = make_ws(environ)
    fd = ws.fileno()

    def refuse(self, conn):
        raise OSError("no more watches")

    monkeypatch.setattr(Readers, "add", refuse)
    with pytest.raises(OSError, match="no more watches"):
        ws.accept()

    peer = Peer(client_sock, client)
    assert isinstance(peer.next(), AcceptConnection)
    assert peer.next_of(CloseConnection).code == CLOSE_INTERNAL_ERROR
    assert fd not in readers()._selector.get_map()
    ws.abort(CLOSE_INTERNAL_ERROR, "again")  # idempotent


def test_werkzeug_closes_the_socket_itself_and_finds_it_shut(pair):
    ws, peer = opened(*pair, server="werkzeug.socket")
    ws.abort(1001, "bye")

    assert peer.next_of(CloseConnection).code == 1001
    assert ws.sock.fileno() != -1  # left to werkzeug, which writes its response...
    with pytest.raises(BrokenPipeError):  # ...and finds a broken pipe, quietly
        ws.sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert peer.next() is None


# -- send timeouts --------------------------------------------------------------------------


def test_a_plain_socket_gets_a_send_timeout_only(pair):
    ws, _ = opened(*pair, send_timeout=1.5)
    try:
        seconds, micros = struct.unpack(
            "ll", ws.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)
        )
        assert seconds + micros / 1e6 == pytest.approx(1.5, abs=0.01)
        assert ws.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)
        assert ws.sock.gettimeout() is None
    finally:
        ws.abort(1000, "done")


# -- a gevent socket ------------------------------------------------------------------------


def test_a_gevent_socket_is_read_by_a_loop_watcher_and_sent_with_its_timeout():
    import gevent
    import gevent.socket

    server_sock, client_sock = gevent.socket.socketpair()
    try:
        ws, peer = opened(server_sock, client_sock, send_timeout=2.0)
        assert ws.gevent and ws.sock.gettimeout() == 2.0
        # Not the shared reader: gevent's selector misses sockets registered while
        # it selects.
        assert ws not in readers()

        peer.send(Ping(payload=b"p"))

        def controls() -> list:
            gevent.sleep(0.01)  # runs gevent's loop, which reads (no monkey-patching here)
            return ws.outbox.drain(0)[0]

        assert isinstance(wait_for(controls, timeout=5, what="the pong")[0], Pong)
        ws.abort(1000, "done")
        assert peer.next_of(CloseConnection).code == 1000
    finally:
        server_sock.close()
        client_sock.close()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_pair(ca: trustme.CA) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """Both ends of a TLS connection, as gunicorn --certfile hands over the server's."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    a, b = socket.socketpair()
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    client.do_handshake()
    handshake.join()
    yield server, client
    server.close()
    client.close()


def _tls_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "turbo-reader-tls"]


def test_a_tls_socket_gets_a_reader_of_its_own_that_stops_with_it(tls_pair):
    before = len(_tls_readers())
    ws, peer = opened(*tls_pair)
    assert ws.tls
    assert ws not in readers()
    assert len(_tls_readers()) == before + 1
    serving = Serving(ws)

    peer.send(Ping(payload=b"tls"))
    assert peer.next_of(Pong).payload == b"tls"
    peer.send(CloseConnection(code=1000))
    assert peer.next_of(CloseConnection).code == 1000

    assert serving.result() == "client closed (1000)"
    wait_for(lambda: len(_tls_readers()) == before, timeout=5)


def test_tls_reads_and_writes_at_once_without_corrupting_the_stream(tls_pair):
    # The reader thread reads pings while the writer sends: one SSL object, two threads.
    outbox = Outbox(1 << 30)
    ws, peer = opened(tls_pair[0], tls_pair[1], outbox, max_incoming_rate=10**6)
    count = 3000
    for n in range(count):
        outbox.put(_message(n, b"<p>" + str(n).encode() * 50 + b"</p>"))
    serving = Serving(ws)
    # The client is one thread (its SSL object is not shared): a ping per event read.
    texts: list[str] = []
    parts, pings, pongs = "", 0, 0
    while len(texts) < count:
        peer.send(Ping(payload=os.urandom(8)))
        pings += 1
        event = peer.next(10)
        assert event is not None, "the server hung up"
        if isinstance(event, TextMessage):
            parts += event.data
            if event.message_finished:
                texts.append(parts)
                parts = ""
        elif isinstance(event, Pong):
            pongs += 1
    assert texts == [f"<p>{str(n) * 50}</p>" for n in range(count)]
    while pongs < pings:  # every ping was read whole, and answered
        assert isinstance(peer.next_of(Pong), Pong)
        pongs += 1
    outbox.close(1000, "done")
    assert serving.result() == "done"


def test_a_tls_peer_that_stops_reading_is_dropped_after_the_send_timeout(ca):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    client.do_handshake()
    handshake.join()
    try:
        outbox = Outbox(1 << 30)
        ws, _ = opened(server, client, outbox, send_timeout=0.3)
        for n in range(200):
            outbox.put(_message(n, b"x" * 8192))
        started = time.monotonic()

        assert Serving(ws).result() == "write failed: TimeoutError"
        assert time.monotonic() - started < 5
        wait_for(lambda: not any(t.is_alive() for t in _tls_readers()), timeout=5)
    finally:
        server.close()
        client.close()


def test_close_codes_keep_their_public_names():
    assert connection.CLOSE_GOING_AWAY == 1001
    assert connection.CLOSE_POLICY_VIOLATION == 1008
    assert connection.CLOSE_MESSAGE_TOO_BIG == 1009
    assert connection.CLOSE_INTERNAL_ERROR == 1011


def test_the_handshake_keeps_wsprotos_accept_token(pair):
    # The 101 answers this client's key (wsproto checks it on the client side).
    server_sock, client_sock = pair
    client, environ = upgrade_environ(server_sock)
    assert len(base64.b64decode(environ["HTTP_SEC_WEBSOCKET_KEY"])) == 16
    ws = make_ws(environ)
    ws.accept()
    assert isinstance(Peer(client_sock, client).next(), AcceptConnection)
    ws.abort(1000, "done")


@pytest.mark.parametrize(
    ("offers", "accepted"),
    [
        ([], False),
        (["permessage-deflate"], True),
        (["permessage-deflate; client_max_window_bits"], True),
        (["permessage-deflate; server_max_window_bits=15"], True),
        (["x-webkit-deflate-frame", "permessage-deflate; server_no_context_takeover"], True),
        # The server's window limited: one shared frame could not serve it; all declined,
        # since wsproto would accept the first offer.
        (["permessage-deflate; server_max_window_bits=10"], False),
        (["permessage-deflate; server_max_window_bits=10", "permessage-deflate"], False),
        (["x-webkit-deflate-frame"], False),
    ],
)
def test_deflate_is_taken_when_offered_with_the_full_window(offers, accepted):
    from turbocast.connection import _deflate_offered

    assert _deflate_offered(offers) is accepted
