"""Batches on a real Redis and a real gunicorn: one round trip, every message once, in order.

The round trips are counted at the publisher's own socket: a round trip is the
client writing again after it has read. A batch sent one message at a time
would write and read a thousand times.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from markupsafe import Markup
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.redis_proxy import RedisProxy
from tests.support import SECRET_KEY, WebServer, forge_cookie, numsub, wait_for
from turbocast import Publisher, TurboStream, channel_for, stream_channel
from turbocast.channels import history_key

SESSIONS = 1000


class Turns:
    """Counts round trips on a socket: each time the client writes after it has read."""

    def __init__(self) -> None:
        self.count = 0
        self._reading = True

    def wrote(self) -> None:
        if self._reading:
            self.count += 1
            self._reading = False

    def read(self) -> None:
        self._reading = True


class _CountingSocket:
    def __init__(self, sock: socket.socket, turns: Turns) -> None:
        self._sock = sock
        self._turns = turns

    def sendall(self, data: Any, *args: Any) -> None:
        self._turns.wrote()
        self._sock.sendall(data, *args)

    def send(self, data: Any, *args: Any) -> int:
        self._turns.wrote()
        return self._sock.send(data, *args)

    def recv(self, *args: Any) -> bytes:
        self._turns.read()
        return self._sock.recv(*args)

    def recv_into(self, *args: Any) -> int:
        self._turns.read()
        return self._sock.recv_into(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def counting_publisher(redis_url: str, turns: Turns) -> Publisher:
    """A publisher whose connections count their round trips into ``turns``."""

    class CountingConnection(redis.Connection):
        def _connect(self) -> Any:
            return _CountingSocket(super()._connect(), turns)

    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    return Publisher(client=redis.Redis(connection_pool=pool))


class Sockets:
    """Many WebSockets of the ``turbocast.v1`` protocol on bare sockets, read by one selector."""

    def __init__(self, ws_url: str) -> None:
        self.url = urlsplit(ws_url)
        self.selector = selectors.DefaultSelector()
        #: Per socket: the ``(kind, label, id, html)`` of every message received.
        self.received: dict[int, list[tuple[str, str, str, str]]] = {}

    def open(self, cookie: str, query: str = "") -> int:
        sock = socket.create_connection((self.url.hostname, self.url.port), timeout=10)
        ws = WSConnection(ConnectionType.CLIENT)
        target = self.url.path + (f"?{query}" if query else "")
        sock.sendall(
            ws.send(
                Request(
                    host=self.url.netloc,
                    target=target,
                    subprotocols=["turbocast.v1"],
                    extra_headers=[(b"cookie", cookie.encode())],
                )
            )
        )
        events: list[Any] = []
        while not any(isinstance(e, AcceptConnection) for e in events):
            data = sock.recv(65536)
            assert data, "the server closed the socket during the handshake"
            ws.receive_data(data)
            events.extend(ws.events())
        sock.setblocking(False)
        key = sock.fileno()
        self.received[key] = []
        # Frames that came in the same read as the 101 (a replay) are messages too.
        self._keep(key, events)
        self.selector.register(sock, selectors.EVENT_READ, (ws, key))
        return key

    def _keep(self, key: int, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, TextMessage):
                head, _, html = event.data.partition("\n")
                if head.startswith("i "):
                    continue  # the socket's id, told first
                kind, label, message_id = head.split(" ")
                self.received[key].append((kind, label, message_id, html))

    def read_until(self, done: Any, timeout: float = 60.0) -> None:
        def pump() -> bool:
            for selected, _ in self.selector.select(timeout=0.2):
                ws, key = selected.data
                data = selected.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                ws.receive_data(data or None)
                self._keep(key, list(ws.events()))
            return bool(done())

        wait_for(pump, timeout=timeout, interval=0, what="the messages")

    def close(self) -> None:
        for selected in list(self.selector.get_map().values()):
            selected.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


@pytest.fixture(scope="module")
def server(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """gunicorn's gevent worker: a thousand sockets in one process."""
    web = WebServer(
        redis_url,
        env={"GUNICORN_CMD_ARGS": "--worker-connections 1500", "TURBO_PING_INTERVAL": "0"},
        worker_class="gevent",
    ).start(log_dir)
    yield web
    web.stop()


def _stream(text: str) -> TurboStream:
    return TurboStream.append("log", Markup("<p>{}</p>").format(text))


def test_a_batch_of_1000_pushes_to_1000_sessions_is_one_round_trip_and_reaches_each_socket(
    server, redis_url, redis_client
):
    sids = [f"batch{uuid.uuid4().hex}" for _ in range(SESSIONS)]
    sockets = Sockets(server.ws_url)
    turns = Turns()
    publisher = counting_publisher(redis_url, turns)
    try:
        keys = [sockets.open(forge_cookie({"turbo_sid": sid}, SECRET_KEY)) for sid in sids]
        wait_for(lambda: numsub(redis_client, channel_for(sids[-1])) == 1, what="the last socket")
        publisher.to_stream("warm-up", _stream("connect and load the script first"))
        turns.count = 0

        with publisher.batch() as batch:
            for n, sid in enumerate(sids):
                batch.to_session(sid, _stream(f"message {n}"))

        assert turns.count == 1, f"{turns.count} round trips for one batch"
        assert batch.receivers == [1] * SESSIONS  # every session's one web process
        sockets.read_until(lambda: all(sockets.received[k] for k in keys))

        ids = []
        for n, (sid, key) in enumerate(zip(sids, keys, strict=True)):
            [(kind, label, message_id, html)] = sockets.received[key]
            assert (kind, label, html) == ("m", "s", str(_stream(f"message {n}")))
            # Its own history entry, under the id the socket got.
            [(entry_id, fields)] = redis_client.xrange(history_key(channel_for(sid)))
            assert entry_id.decode() == message_id
            ids.append(tuple(int(part) for part in message_id.split("-")))
        assert ids == sorted(ids) and len(set(ids)) == SESSIONS  # in the order given
    finally:
        sockets.close()
        publisher.close()


def test_a_batch_to_one_page_arrives_once_in_order_each_with_its_own_replayable_id(
    server, redis_url, redis_client, publisher
):
    sid = f"batch{uuid.uuid4().hex}"
    cookie = forge_cookie({"turbo_sid": sid}, SECRET_KEY)
    sockets = Sockets(server.ws_url)
    try:
        live = sockets.open(cookie)
        wait_for(lambda: numsub(redis_client, channel_for(sid)) == 1, what="the socket")
        with publisher.batch() as batch:
            for n in range(100):
                batch.to_session(sid, _stream(f"n{n}"))
        sockets.read_until(lambda: len(sockets.received[live]) >= 100)
        received = sockets.received[live]
        assert [html for *_, html in received] == [str(_stream(f"n{n}")) for n in range(100)]

        # A page that last saw message 49 is replayed 50..99 from the history, once each.
        resumed = sockets.open(cookie, f"since=s~{received[49][2]}")
        sockets.read_until(lambda: len(sockets.received[resumed]) >= 50)
        assert sockets.received[resumed] == received[50:]
        assert len(sockets.received[live]) == 100  # nothing more came to the first
    finally:
        sockets.close()


# -- Redis failing mid-batch --------------------------------------------------------------


@pytest.fixture
def listener(redis_client: redis.Redis) -> Iterator[tuple[str, redis.client.PubSub]]:
    name = f"batch-{uuid.uuid4().hex[:12]}"
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(stream_channel(name))
    wait_for(lambda: numsub(redis_client, stream_channel(name)) == 1, what="the listener")
    yield name, pubsub
    pubsub.close()


def _received(pubsub: redis.client.PubSub, count: int) -> list[bytes]:
    received: list[bytes] = []

    def enough() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message:
            received.append(bytes(message["data"]))
        return len(received) >= count

    wait_for(enough, what=f"{count} messages")
    return received


def _check_each_once_in_order(redis_client, pubsub, name: str, count: int) -> None:
    expected = [str(_stream(f"m{n}")).encode() for n in range(count)] + [
        str(_stream("marker")).encode()
    ]
    entries = redis_client.xrange(history_key(stream_channel(name)))
    assert [fields[b"d"] for _, fields in entries] == expected
    received = _received(pubsub, count + 1)
    assert [m.partition(b" ")[2] for m in received] == expected
    # Each head is the entry's id and the publisher's time, which the entry keeps too.
    heads = [i + b";t=" + fields[b"t"] for i, fields in entries]
    assert [m.partition(b" ")[0] for m in received] == heads
    # The batch's messages carry one time, the first attempt's, a retry's included.
    assert len({fields[b"t"] for _, fields in entries[:count]}) == 1


def test_a_batch_whose_reply_was_lost_is_retried_and_sends_nothing_twice(
    redis_url, redis_client, listener, caplog
):
    name, pubsub = listener
    with RedisProxy(redis_url) as proxy:
        publisher = Publisher(proxy.url, timeout=1.0)
        try:
            publisher.to_stream("warm-up", _stream("connect and load the script first"))
            proxy.drop_reply("EVALSHA")  # Redis runs the whole batch; one reply never comes
            with caplog.at_level(logging.INFO), publisher.batch() as batch:
                for n in range(20):
                    batch.to_stream(name, _stream(f"m{n}"))
            publisher.to_stream(name, _stream("marker"))
        finally:
            publisher.close()

    assert "batch publish failed, retrying once" in caplog.text
    assert "retried publishes had landed" in caplog.text
    _check_each_once_in_order(redis_client, pubsub, name, 20)


def test_a_batch_cut_off_midway_sends_the_rest_on_the_retry_once_each_in_order(
    redis_client, listener, publisher, monkeypatch
):
    name, pubsub = listener
    run_scripts = publisher.history._run_scripts
    attempts: list[int] = []

    first_us: list[int] = []

    def cut(calls: list[Any]) -> list[Any]:
        attempts.append(len(calls))
        if len(attempts) == 1:
            run_scripts(calls[:7])  # Redis ran the first seven, then the connection broke
            first_us.append(calls[0][1][8])  # ARGV[9]: the first attempt's time (µs)
            # The clock moves on before the retry: a time of its own would show.
            wait_for(lambda: time.time() * 1_000_000 > first_us[0] + 1000, what="a ms to pass")
            raise redis.ConnectionError("Connection reset by peer")
        return run_scripts(calls)

    monkeypatch.setattr(publisher.history, "_run_scripts", cut)
    with publisher.batch() as batch:
        for n in range(20):
            batch.to_stream(name, _stream(f"m{n}"))
    publisher.to_stream(name, _stream("marker"))

    assert attempts == [20, 20]
    _check_each_once_in_order(redis_client, pubsub, name, 20)
    entries = redis_client.xrange(history_key(stream_channel(name)))
    # The seven of the first attempt and the thirteen of the retry: the first one's time.
    assert [fields[b"t"] for _, fields in entries[:20]] == [str(first_us[0]).encode()] * 20
