"""Nothing lost: history, resume, reconnecting clients, Redis and web restarts, the gap signal."""

from __future__ import annotations

import http.client
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import simple_websocket
from markupsafe import Markup

from app.embedded_redis import EmbeddedRedis
from tests.support import (
    ROOT,
    ResumingClient,
    WebServer,
    connect,
    numsub,
    open_session,
    page_stream_url,
    receive,
    session_id_of,
    wait_for,
)
from turbocast import Publisher, TurboStream, channel_for
from turbocast.channels import history_key

REFRESH = '<turbo-stream action="refresh"></turbo-stream>'


def _stream(n: int | str) -> TurboStream:
    return TurboStream.append("log", Markup('<p data-n="{}"></p>').format(n))


def _numbers(client: ResumingClient) -> list[int]:
    return [
        int(html.split('data-n="')[1].split('"')[0])
        for k, _, _, html in client.received
        if k == "m"
    ]


@pytest.fixture(scope="module", params=["gthread", "gevent"])
def web(request: pytest.FixtureRequest, redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(redis_url, worker_class=request.param).start(log_dir)
    yield server
    server.stop()


def _page(web: WebServer) -> tuple[str, str, str]:
    """A rendered page: its cookie, session id and the socket URL it carries."""
    cookie = open_session(web.base_url)
    return cookie, session_id_of(cookie), page_stream_url(web.base_url, "/", cookie)


# (a) -------------------------------------------------------------------------------------


def test_what_is_published_between_render_and_connect_arrives_once(web, publisher, redis_client):
    cookie, sid, url = _page(web)
    assert "since=s~" in url and "since=b~" in url
    publisher.to_session(sid, _stream(1))  # the page is rendered; its socket is not open yet
    client = ResumingClient(url, cookie).connect()
    try:
        assert client.next()[3] == str(_stream(1))
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        publisher.to_session(sid, _stream(2))
        assert client.next()[3] == str(_stream(2))
        assert _numbers(client) == [1, 2]
    finally:
        client.close()


def test_turbos_own_element_gets_the_render_to_connect_gap_too(web, publisher):
    cookie, sid, url = _page(web)
    publisher.to_session(sid, _stream("early"))
    ws = connect(url, cookie)  # plain WebSocket, no subprotocol
    try:
        assert receive(ws) == str(_stream("early"))  # bare HTML, as Turbo expects
    finally:
        ws.close()


# (b) -------------------------------------------------------------------------------------


def test_what_is_published_while_a_client_is_away_arrives_once_in_order(
    web, publisher, redis_client
):
    cookie, sid, url = _page(web)
    client = ResumingClient(url, cookie).connect()
    try:
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        for n in (1, 2, 3):
            publisher.to_session(sid, _stream(n))
            client.next()
        client.close()
        wait_for(lambda: numsub(redis_client, channel_for(sid)) == 0)
        for n in (4, 5, 6):
            publisher.to_session(sid, _stream(n))
        publisher.to_all(_stream("everyone"))
        client.connect()
        for _ in range(4):
            client.next()
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        publisher.to_session(sid, _stream(7))
        client.next()
        assert [h for k, lbl, _, h in client.received if lbl == "s"] == [
            str(_stream(n)) for n in range(1, 8)
        ]
        assert [h for k, lbl, _, h in client.received if lbl == "b"] == [str(_stream("everyone"))]
    finally:
        client.close()


def test_a_client_away_longer_than_the_history_gets_the_gap_signal(web, redis_url, redis_client):
    short = Publisher(redis_url, history_maxlen=5)
    cookie, sid, url = _page(web)
    client = ResumingClient(url, cookie).connect()
    try:
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        short.to_session(sid, _stream(0))
        client.next()
        client.close()
        # The history keeps the last 5 and less than one stream node more (Redis trims
        # whole nodes, of at most 100 entries by default): 120 later, 0 is gone.
        for n in range(1, 121):
            short.to_session(sid, _stream(n))
        assert redis_client.xlen(history_key(channel_for(sid))) < 121
        client.connect()
        kind, label, _, html = client.next()
        assert (kind, label, html) == ("g", "s", REFRESH)
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        short.to_session(sid, _stream(121))
        kind, _, _, html = client.next()
        assert (kind, html) == ("m", str(_stream(121)))  # live again, no stale replay
    finally:
        client.close()
        short.close()


# Server-Sent Events ----------------------------------------------------------------------


class SSEReader:
    """EventSource, by hand: reads events and reconnects with Last-Event-ID."""

    def __init__(self, url: str, cookie: str) -> None:
        self.parts = urlsplit(url)
        self.cookie = cookie
        self.last_id: str | None = None
        self.conn: http.client.HTTPConnection | None = None

    def open(self) -> SSEReader:
        self.conn = http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=10)
        headers = {"Cookie": self.cookie, "Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        self.conn.request("GET", f"{self.parts.path}?{self.parts.query}", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type").startswith("text/event-stream")
        return self

    def next(self) -> str:
        """The data of the next event (comments and retry lines skipped)."""
        data: list[str] = []
        while True:
            line = self.response.fp.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                self.last_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                return "\n".join(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def test_server_sent_events_resume_from_last_event_id(web, publisher, redis_client):
    cookie = open_session(web.base_url)
    sid = session_id_of(cookie)
    url = page_stream_url(web.base_url, "/", cookie).replace("ws://", "http://")
    url = url.replace("/turbo-stream?", "/turbo-stream/events?")
    reader = SSEReader(url, cookie).open()
    try:
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        publisher.to_session(sid, _stream(1))
        assert reader.next() == str(_stream(1))
        assert reader.last_id and "s~" in reader.last_id
        reader.close()  # (the server notices at its next write; nothing depends on it)
        publisher.to_session(sid, _stream(2))
        publisher.to_session(sid, _stream(3))
        reader.open()
        assert [reader.next(), reader.next()] == [str(_stream(2)), str(_stream(3))]
    finally:
        reader.close()


# (c) -------------------------------------------------------------------------------------

RETRYING_PUBLISHER = textwrap.dedent(
    """
    import sys
    import redis
    from markupsafe import Markup
    from turbocast import Publisher, PublishError, TurboStream
    from tests.support import wait_for

    url, sid, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    publisher = Publisher(url)
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5)

    def redis_answers():
        try:
            return probe.ping()
        except redis.RedisError:
            return False

    for n in range(first, last + 1):
        stream = TurboStream.append("log", Markup('<p data-n="{}"></p>').format(n))
        while True:  # what a Celery task's autoretry does, in short
            try:
                publisher.to_session(sid, stream)
                break
            except PublishError:
                print("retrying", flush=True)
                wait_for(redis_answers, timeout=60, interval=0.1, what="Redis to come back")
    print("done", flush=True)
    """
)


def test_messages_survive_a_redis_restart_with_the_publisher_retrying(log_dir, tmp_path):
    with EmbeddedRedis() as server:
        web = WebServer(server.url).start(log_dir)
        client_redis = redis.Redis.from_url(server.url)
        publisher = Publisher(server.url)
        try:
            cookie, sid, url = _page(web)
            client = ResumingClient(url, cookie).connect()
            wait_for(lambda: numsub(client_redis, channel_for(sid)) >= 1)
            for n in range(1, 6):
                publisher.to_session(sid, _stream(n))
                client.next()

            server.kill()
            out = tmp_path / "publisher.out"
            with open(out, "w") as sink:
                retrying = subprocess.Popen(
                    [sys.executable, "-c", RETRYING_PUBLISHER, server.url, sid, "6", "10"],
                    cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                )  # fmt: skip
            wait_for(lambda: "retrying" in out.read_text(), what="the publisher to be retrying")
            server.start()  # the same port, nothing kept
            assert retrying.wait(timeout=60) == 0, out.read_text()
            for _ in range(5):
                client.next(timeout=30)
            assert _numbers(client) == list(range(1, 11))
            assert all(kind == "m" for kind, *_ in client.received)
            assert client.ws is not None and client.ws.connected  # the same socket throughout
            client.close()
        finally:
            publisher.close()
            client_redis.close()
            web.stop()


# (d) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_messages_survive_a_web_process_restart(
    redis_url, log_dir, publisher, redis_client, worker_class
):
    web = WebServer(redis_url, worker_class=worker_class).start(log_dir)
    try:
        cookie, sid, url = _page(web)
        client = ResumingClient(url, cookie).connect()
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        for n in (1, 2, 3):
            publisher.to_session(sid, _stream(n))
            client.next()

        web.stop()  # SIGTERM: gunicorn's graceful shutdown, sockets told "going away"
        with pytest.raises(simple_websocket.ConnectionClosed) as closed:
            client.ws.receive(timeout=10)
        assert closed.value.reason == 1001
        for n in (4, 5, 6):
            publisher.to_session(sid, _stream(n))

        web.start(log_dir)  # the same port
        wait_for(lambda: _reconnects(client), timeout=30, what="the reconnect")
        for _ in range(3):
            client.next()
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        publisher.to_session(sid, _stream(7))
        client.next()
        assert _numbers(client) == list(range(1, 8))
        assert "socket closed: server shutting down" in web.log()
        client.close()
    finally:
        web.stop()


def _reconnects(client: ResumingClient) -> bool:
    try:
        client.connect()
    except (OSError, simple_websocket.ConnectionError):
        return False
    return True
