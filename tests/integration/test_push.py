"""The core push path, end to end: real Redis, real gunicorn, real WebSocket clients."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import simple_websocket
from markupsafe import Markup

from app.embedded_redis import EmbeddedRedis
from tests.support import (
    ROOT,
    SECRET_KEY,
    RawClient,
    WebServer,
    connect,
    forge_cookie,
    handshake_status,
    numsub,
    open_session,
    receive,
    session_id_of,
    wait_for,
)
from turbocast import (
    CLOSE_OUTBOX_OVERFLOW,
    STATUS_NO_SESSION,
    STATUS_SERVER_CANNOT_HOLD,
    Publisher,
    TurboStream,
    broadcast_channel,
    channel_for,
)


def _stream(text: str) -> TurboStream:
    return TurboStream.append("messages", Markup("<li>{}</li>").format(text))


def _session(web: WebServer, redis_client) -> tuple[simple_websocket.Client, str]:
    """A browser session with its socket open and subscribed in Redis."""
    cookie = open_session(web.base_url)
    sid = session_id_of(cookie)
    ws = connect(web.ws_url, cookie)
    wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the relay to subscribe")
    return ws, sid


def test_push_to_one_session_reaches_only_that_session(web, redis_client, publisher):
    ws_a, sid_a = _session(web, redis_client)
    ws_b, sid_b = _session(web, redis_client)
    try:
        publisher.to_session(sid_a, _stream("for A"))
        publisher.to_session(sid_b, _stream("for B"))
        assert receive(ws_a) == str(_stream("for A"))
        # B's first message is its own: "for A" was published before it and would
        # have arrived first had it leaked to B.
        assert receive(ws_b) == str(_stream("for B"))
        assert ws_a.receive(timeout=0.3) is None
    finally:
        ws_a.close()
        ws_b.close()


def test_push_to_everyone_reaches_every_session(web, redis_client, publisher):
    ws_a, _ = _session(web, redis_client)
    ws_b, _ = _session(web, redis_client)
    try:
        wait_for(lambda: numsub(redis_client, broadcast_channel()) >= 1)
        assert publisher.to_all(_stream("hello all")) >= 1
        assert receive(ws_a) == str(_stream("hello all"))
        assert receive(ws_b) == str(_stream("hello all"))
    finally:
        ws_a.close()
        ws_b.close()


def test_several_streams_travel_as_one_message(web, redis_client, publisher):
    ws, sid = _session(web, redis_client)
    try:
        publisher.to_session(sid, _stream("one"), TurboStream.remove("old"))
        assert receive(ws) == str(_stream("one")) + str(TurboStream.remove("old"))
    finally:
        ws.close()


def test_push_from_a_process_without_flask_reaches_the_socket(web, redis_client, redis_url):
    ws, sid = _session(web, redis_client)
    script = textwrap.dedent(
        """
        import sys
        from flask import has_app_context
        from markupsafe import Markup
        from turbocast import Publisher, TurboStream

        assert not has_app_context()
        publisher = Publisher(sys.argv[1])
        stream = TurboStream.replace("clock", Markup("<b>from a worker</b>"))
        print(publisher.to_session(sys.argv[2], stream))
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, redis_url, sid],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert result.stdout.strip() == "1"
        assert receive(ws) == str(TurboStream.replace("clock", Markup("<b>from a worker</b>")))
    finally:
        ws.close()


def test_the_server_starts_clean(web):
    # gunicorn's master imported -c python:turbocast.gunicorn_hooks before a gevent worker
    # patched: had that import loaded redis or ssl, gevent would have warned here.
    assert "MonkeyPatchWarning" not in web.log()
    assert "Booting worker" in web.log()


def test_a_server_that_serves_one_request_at_a_time_refuses_to_hold_a_socket(redis_url, log_dir):
    # gunicorn's default sync worker: one open page would hold the process's only worker.
    web = WebServer(redis_url, worker_class="sync", threads=1).start(log_dir)
    try:
        cookie = open_session(web.base_url)
        assert handshake_status(web.ws_url, cookie) == STATUS_SERVER_CANNOT_HOLD
        wait_for(
            lambda: "ERROR turbocast: this server serves one request at a time" in web.log(),
            what="the refusal's log line",
        )
        # The site itself goes on answering: the worker was not taken.
        assert open_session(web.base_url)
    finally:
        web.stop()


def test_handshake_without_session_cookie_is_refused(web):
    assert handshake_status(web.ws_url, cookie=None) == STATUS_NO_SESSION
    wait_for(lambda: "refused WebSocket handshake: no session cookie" in web.log())


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(forge_cookie({"turbo_sid": "A" * 32}, "not-the-secret"), id="other-secret"),
        pytest.param(
            "session=eyJ0dXJib19zaWQiOiJBQUFBQUFBQUFBQUFBQUFBQUFBQSJ9.bad.sig", id="garbage"
        ),
    ],
)
def test_handshake_with_forged_cookie_is_refused(web, redis_client, cookie):
    assert handshake_status(web.ws_url, cookie=cookie) == STATUS_NO_SESSION
    wait_for(lambda: "refused WebSocket handshake: invalid session cookie" in web.log())
    # The server goes on serving everyone else.
    ws, _ = _session(web, redis_client)
    ws.close()


def test_tampered_session_id_in_a_validly_signed_cookie_cannot_address_another_session(
    web, redis_client, publisher
):
    # Signed with the real secret but holding a malformed id: refused, not subscribed.
    cookie = forge_cookie({"turbo_sid": "../broadcast"}, SECRET_KEY)
    assert handshake_status(web.ws_url, cookie=cookie) == STATUS_NO_SESSION


def test_slow_client_is_closed_without_delaying_others(web, redis_client, publisher):
    slow_cookie = open_session(web.base_url)
    slow_sid = session_id_of(slow_cookie)
    slow = RawClient(web.ws_url, slow_cookie)
    fast, fast_sid = _session(web, redis_client)
    wait_for(lambda: numsub(redis_client, channel_for(slow_sid)) >= 1)
    big = TurboStream.update("blob", Markup("x" * 64 * 1024))
    try:
        # Far more than the socket buffers and the outbox (8) hold, while the slow
        # client reads nothing; the fast client must get each of its messages meanwhile.
        for i in range(120):
            publisher.to_session(slow_sid, big)
            if i % 10 == 0:
                publisher.to_session(fast_sid, _stream(f"fast {i}"))
                assert receive(fast, timeout=5) == str(_stream(f"fast {i}"))
        # The relay handles messages in order: once this arrives, every put for the
        # slow client has been tried and its outbox has overflowed.
        publisher.to_session(fast_sid, _stream("after"))
        assert receive(fast, timeout=5) == str(_stream("after"))

        messages, close = slow.read_until_closed()
        assert close is not None, "the slow client must get a close frame"
        assert close.code == CLOSE_OUTBOX_OVERFLOW
        assert len(messages) < 120
        assert all(m == str(big) for m in messages)
        wait_for(lambda: "outbox overflow" in web.log(), what="the overflow log line")
        # The fast client is still being served.
        publisher.to_session(fast_sid, _stream("still here"))
        assert receive(fast) == str(_stream("still here"))
    finally:
        slow.close()
        fast.close()


def test_socket_survives_a_redis_restart(log_dir):
    with EmbeddedRedis() as server:
        web = WebServer(server.url).start(log_dir)
        publisher = Publisher(server.url)
        client = __import__("redis").Redis.from_url(server.url)
        try:
            ws, sid = _session(web, client)
            publisher.to_session(sid, _stream("before"))
            assert receive(ws) == str(_stream("before"))

            server.kill()
            server.start()  # the same port, empty: no subscriptions survive
            wait_for(
                lambda: numsub(client, channel_for(sid)) >= 1,
                timeout=30,
                what="the relay to resubscribe after the restart",
            )
            publisher.to_session(sid, _stream("after"))
            assert receive(ws) == str(_stream("after"))
            assert ws.connected
            assert "relay lost Redis" in web.log()
            ws.close()
        finally:
            client.close()
            publisher.close()
            web.stop()


@contextmanager
def _server_with_raw_peer(
    redis_url: str, log_dir: Path, worker_class: str, env: dict[str, str]
) -> Iterator[tuple[WebServer, redis.Redis, str, RawClient]]:
    """A server of its own and one subscribed RawClient: (server, Redis client, session, peer)."""
    web = WebServer(redis_url, env=env, worker_class=worker_class).start(log_dir)
    client = redis.Redis.from_url(redis_url)
    peer = None
    try:
        cookie = open_session(web.base_url)
        sid = session_id_of(cookie)
        peer = RawClient(web.ws_url, cookie)
        wait_for(lambda: numsub(client, channel_for(sid)) == 1, what="the peer's channel")
        yield web, client, sid, peer
    finally:
        if peer is not None:
            peer.close()
        client.close()
        web.stop()


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_peer_that_stops_reading_is_dropped_after_the_send_timeout(
    log_dir, redis_url, publisher, worker_class
):
    # A large outbox, so it is the stuck write, not an overflow, that ends the socket.
    env = {"TURBO_SEND_TIMEOUT": "1", "TURBO_OUTBOX_BYTES": "67108864", "TURBO_PING_INTERVAL": "0"}
    with _server_with_raw_peer(redis_url, log_dir, worker_class, env) as (web, client, sid, _):
        big = TurboStream.update("blob", Markup("x" * 64 * 1024))
        # Far more than the socket buffers hold; well under the outbox's bound.
        for _ in range(100):
            publisher.to_session(sid, big)

        wait_for(
            lambda: "WARNING turbocast: socket closed: write failed" in web.log(),
            what="the stuck write giving up",
        )
        wait_for(lambda: numsub(client, channel_for(sid)) == 0, what="the socket detached")
        assert "outbox overflow" not in web.log()


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_heartbeat_pings_keep_an_answering_peer_and_drop_a_silent_one(
    log_dir, redis_url, worker_class
):
    env = {"TURBO_PING_INTERVAL": "0.3"}
    with _server_with_raw_peer(redis_url, log_dir, worker_class, env) as (web, client, sid, peer):
        # Answered pings keep coming: the socket stays.
        assert peer.pings(4, answer=True) == 4
        assert numsub(client, channel_for(sid)) == 1

        # Unanswered, the next heartbeat finds no pong and the server hangs up.
        assert peer.pings(10, answer=False) < 10
        wait_for(
            lambda: "WARNING turbocast: socket closed: heartbeat timeout" in web.log(),
            what="the heartbeat log line",
        )
        wait_for(lambda: numsub(client, channel_for(sid)) == 0, what="the socket detached")
