"""Sockets where they used to fail.

- A failure right after the 101, on a real threaded server: the client gets a close
  frame (1011), never HTTP after the 101, and the sockets that come next (on the
  same file descriptors) all work. The app runs in this process, in Werkzeug's
  threaded server, so a test can make one step fail by monkeypatching it.
- Every serving mode (gunicorn's threads or gevent, plain or ending TLS itself with
  ``--certfile``): sockets are read (pongs seen, heartbeats pass) while they are
  written, and deliver.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from markupsafe import Markup
from werkzeug.serving import make_server
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from app import create_app
from tests.support import (
    SECRET_KEY,
    Certificates,
    RawClient,
    WebServer,
    numsub,
    open_session,
    session_id_of,
    wait_for,
)
from turbocast import CLOSE_INTERNAL_ERROR, Publisher, TurboStream, channel_for
from turbocast.connection import WebSocket
from turbocast.readers import Readers, readers

SOCKETS_AFTER = 20


class LiveServer:
    """``create_app()`` in Werkzeug's threaded server, in a thread of this process."""

    def __init__(self, redis_url: str) -> None:
        self.app = create_app(
            {
                "SECRET_KEY": SECRET_KEY,
                "REDIS_URL": redis_url,
                "TURBO_PING_INTERVAL": 0,
                "TURBO_SEND_TIMEOUT": 10,
            }
        )
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/turbo-stream"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        self.app.extensions["turbo"].shutdown()


@pytest.fixture
def live(redis_url: str) -> Iterator[LiveServer]:
    server = LiveServer(redis_url)
    yield server
    server.stop()


def _stream(text: str) -> TurboStream:
    return TurboStream.append("messages", Markup("<li>{}</li>").format(text))


def _raw(url: str, cookie: str) -> RawClient:
    client = RawClient(url, cookie, rcvbuf=65536)
    return client


def _expect_1011_and_nothing_after(client: RawClient) -> None:
    """The close frame comes, then EOF: no HTTP response written after the 101."""
    messages, close = client.read_until_closed(timeout=10)
    assert messages == []
    assert close is not None, "the server hung up without a close frame"
    assert close.code == CLOSE_INTERNAL_ERROR
    client.sock.settimeout(5)
    assert client.sock.recv(4096) == b""


def _all_later_sockets_work(live: LiveServer, publisher: Publisher, redis_client: Any) -> None:
    """SOCKETS_AFTER new sockets, opened together, each gets its own push.

    Clients and server share this process's descriptors, and the kernel hands out
    the lowest free one: the failed socket's descriptor is soon someone else's.
    """
    clients: list[tuple[RawClient, str]] = []
    try:
        for _ in range(SOCKETS_AFTER):
            cookie = open_session(live.base_url)
            clients.append((_raw(live.ws_url, cookie), session_id_of(cookie)))
        channels = [channel_for(sid) for _, sid in clients]
        wait_for(lambda: all(numsub(redis_client, c) >= 1 for c in channels), what="subscriptions")
        for n, (_, sid) in enumerate(clients):
            publisher.to_session(sid, _stream(f"push {n}"))
        for n, (client, _) in enumerate(clients):
            assert _next_text(client) == str(_stream(f"push {n}"))
    finally:
        for client, _ in clients:
            client.close()


def _next_text(client: RawClient, timeout: float = 10.0) -> str:
    client.sock.settimeout(timeout)
    while True:
        for i, event in enumerate(client.events):
            if isinstance(event, TextMessage):
                del client.events[: i + 1]
                return event.data
        client.events = []
        assert client._pump(), "the server hung up"


def _no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.name == "werkzeug" and r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_a_reader_that_cannot_take_the_socket_closes_it_with_1011_and_the_next_work(
    live, publisher, redis_client, monkeypatch, caplog
):
    real_add = Readers.add
    failed: list[int] = []

    def add_failing_once(self: Readers, conn: Any) -> None:
        if not failed:
            failed.append(conn.fileno())
            raise OSError("injected: the reader could not register the socket")
        real_add(self, conn)

    monkeypatch.setattr(Readers, "add", add_failing_once)
    cookie = open_session(live.base_url)
    client = _raw(live.ws_url, cookie)
    try:
        _expect_1011_and_nothing_after(client)
    finally:
        client.close()

    assert failed
    wait_for(lambda: numsub(redis_client, channel_for(session_id_of(cookie))) == 0)
    _all_later_sockets_work(live, publisher, redis_client)
    _no_error_logged(caplog)


def test_a_writer_that_fails_before_it_starts_closes_with_1011_and_the_next_work(
    live, publisher, redis_client, monkeypatch, caplog
):
    real_serve = WebSocket.serve
    failed: list[WebSocket] = []

    def serve_failing_once(self: WebSocket, replay: list[Any], **options: Any) -> str:
        if not failed:
            failed.append(self)
            raise RuntimeError("injected: the writer failed before its first write")
        return real_serve(self, replay, **options)

    monkeypatch.setattr(WebSocket, "serve", serve_failing_once)
    cookie = open_session(live.base_url)
    client = _raw(live.ws_url, cookie)
    try:
        _expect_1011_and_nothing_after(client)
    finally:
        client.close()

    assert failed
    # The reader let go of it (after the close wait): nothing stale is left.
    wait_for(lambda: failed[0] not in readers(), what="the failed socket's unregistration")
    assert failed[0] not in [key.data for key in readers()._selector.get_map().values()]
    _all_later_sockets_work(live, publisher, redis_client)
    _no_error_logged(caplog)


# -- every serving mode, TLS ended by gunicorn itself too ---------------------------------------

PING_INTERVAL = 1.0
CLIENTS = 5
PUSHES_EACH = 20


class StreamClient:
    """A ws:// or wss:// client in one thread (an SSL socket is never shared): answers pings."""

    def __init__(self, url: str, cookie: str, context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=parts.hostname)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pings = 0
        self.texts: list[str] = []
        self.closed: CloseConnection | None = None
        self._partial = ""
        self._accepted = False
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=parts.netloc,
                    target=parts.path,
                    extra_headers=[(b"cookie", cookie.encode())],
                )
            )
        )
        self.pump_until(lambda: self._accepted, what="the 101")

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        if not data:
            raise AssertionError(f"the server hung up (close: {self.closed})")
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self._accepted = True
            elif isinstance(event, Ping):
                self.pings += 1
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self.texts.append(self._partial)
                    self._partial = ""
            elif isinstance(event, CloseConnection):
                self.closed = event

    def pump_until(self, done: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
        """Read (answering pings) until ``done()``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or done}")
            self._pump(0.2)

    def wait_texts(self, count: int, what: str) -> None:
        self.pump_until(lambda: len(self.texts) >= count, what=what)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(
    scope="module",
    params=[("gthread", False), ("gevent", False), ("gthread", True), ("gevent", True)],
    ids=["gthread", "gevent", "gthread-tls", "gevent-tls"],
)
def served(
    request: pytest.FixtureRequest, redis_url: str, log_dir: Path, certificates: Certificates
) -> Iterator[WebServer]:
    """gunicorn in one serving mode; for the -tls ones it ends TLS itself."""
    worker_class, tls = request.param
    server = WebServer(
        redis_url,
        env={"TURBO_PING_INTERVAL": str(PING_INTERVAL), "TURBO_SEND_TIMEOUT": "10"},
        worker_class=worker_class,
        certificates=certificates if tls else None,
    ).start(log_dir)
    yield server
    server.stop()


def _open(served: WebServer, redis_client: Any) -> tuple[StreamClient, str]:
    cookie = open_session(served.base_url, served.client_context())
    sid = session_id_of(cookie)
    client = StreamClient(served.ws_url, cookie, served.client_context())
    wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
    return client, sid


def test_a_socket_answers_heartbeats_and_still_gets_a_push_three_seconds_later(
    served, publisher, redis_client
):
    client, sid = _open(served, redis_client)
    try:
        started = time.monotonic()
        # More than two heartbeat intervals: a pong the server did not read would
        # have dropped the socket at the second ping.
        client.pump_until(lambda: time.monotonic() - started > 3 * PING_INTERVAL, timeout=10)
        assert client.pings >= 2
        assert client.closed is None

        publisher.to_session(sid, _stream("after the heartbeats"))

        client.pump_until(lambda: client.texts, what="the push")
        assert client.texts == [str(_stream("after the heartbeats"))]
    finally:
        client.close()


def test_five_sockets_each_get_twenty_pushes_in_order(served, publisher, redis_client):
    opened = [_open(served, redis_client) for _ in range(CLIENTS)]
    try:
        for n in range(PUSHES_EACH):
            for i, (_, sid) in enumerate(opened):
                publisher.to_session(sid, _stream(f"{i}:{n}"))
        for i, (client, _) in enumerate(opened):
            client.wait_texts(PUSHES_EACH, what=f"client {i}'s pushes")
            assert client.texts == [str(_stream(f"{i}:{n}")) for n in range(PUSHES_EACH)]
            assert client.closed is None
    finally:
        for client, _ in opened:
            client.close()
