"""Redis that hangs instead of refusing, and a reply lost after Redis did the work.

The web server talks to Redis through :class:`tests.redis_proxy.RedisProxy`,
which can stop forwarding (a dead network: connections stay open, nothing
comes through) and resume, or swallow one reply. Messages "published during
the outage" go to the real Redis directly, as a worker on another network
path would publish them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from markupsafe import Markup

from tests.redis_proxy import RedisProxy
from tests.support import (
    ResumingClient,
    WebServer,
    open_session,
    page_stream_url,
    session_id_of,
    wait_for,
)
from turbocast import Publisher, TurboStream

#: Seconds any Redis call of a request or of the relay may take (the server's setting).
REDIS_TIMEOUT = 1.0
#: How long a handshake may take to be refused while Redis hangs: one timeout for the
#: subscription or the history, one more for the other, and room for a busy machine.
REFUSAL_BOUND = 2.0 * REDIS_TIMEOUT + 0.5
#: How long the outage lasts: longer than the relay needs to notice a silent Redis
#: (a health check after 1 s of silence, unanswered for 1 s) and than a heartbeat.
OUTAGE_SECONDS = 3.0


def _stream(n: int) -> TurboStream:
    return TurboStream.append("log", Markup('<p data-n="{}"></p>').format(n))


def _number(html: str) -> int:
    match = re.search(r'data-n="(\d+)"', html)
    assert match, html[:200]
    return int(match.group(1))


def _prefix() -> str:
    # Channels and histories of this test alone, in the shared test Redis.
    return f"out{secrets.token_hex(4)}"


@contextlib.contextmanager
def _server(
    redis_url: str, log_dir: Path, worker_class: str, env: dict[str, str]
) -> Iterator[WebServer]:
    web = WebServer(redis_url, env=env, worker_class=worker_class).start(log_dir)
    try:
        yield web
    finally:
        web.stop()


def _handshake(url: str, cookie: str, timeout: float) -> tuple[int | None, float]:
    """Send a ``turbocast.v1`` upgrade request; return the HTTP status (``None``: no answer
    within ``timeout`` seconds) and how long the answer took.
    """
    parts = urlsplit(url)
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: turbocast.v1\r\n"
        f"Cookie: {cookie}\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        head = b""
        try:
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except TimeoutError:
            return None, time.monotonic() - started
    elapsed = time.monotonic() - started
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.1 ") else b""
    return (int(status) if status.isdigit() else None), elapsed


class Page:
    """An open page: its socket, and what was published to it, in order, per label."""

    def __init__(self, web: WebServer, board: int) -> None:
        cookie = open_session(web.base_url)
        self.sid = session_id_of(cookie)
        self.board = board
        self.label = f"t:board:{board}"
        self.client = ResumingClient(
            page_stream_url(web.base_url, f"/boards/{board}", cookie), cookie
        ).connect()
        self.expected: dict[str, list[int]] = {"s": [], "b": [], self.label: []}

    def got(self) -> dict[str, list[int]]:
        got: dict[str, list[int]] = {label: [] for label in self.expected}
        for kind, label, _, html in self.client.received:
            got.setdefault(label, []).append(_number(html) if kind == "m" else -1)
        return got

    def read_all(self, timeout: float) -> None:
        """Read until everything published to this page has come (or fail)."""
        want = sum(len(v) for v in self.expected.values())
        while len(self.client.received) < want:
            self.client.next(timeout=timeout)


class Numbered:
    """Publishes to the pages' sessions, boards and everyone; notes who must get what."""

    def __init__(self, publisher: Publisher, pages: list[Page]) -> None:
        self.publisher = publisher
        self.pages = pages
        self.n = 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    def round(self) -> None:
        """One message to each page's session, one to each board, one to everyone."""
        for page in self.pages:
            n = self._next()
            self.publisher.to_session(page.sid, _stream(n))
            page.expected["s"].append(n)
        for board in sorted({p.board for p in self.pages}):
            n = self._next()
            self.publisher.to_stream(f"board:{board}", _stream(n))
            for page in self.pages:
                if page.board == board:
                    page.expected[page.label].append(n)
        n = self._next()
        self.publisher.to_all(_stream(n))
        for page in self.pages:
            page.expected["b"].append(n)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_while_redis_hangs_new_sockets_are_refused_quickly_and_open_ones_lose_nothing(
    redis_url, log_dir, worker_class
):
    prefix = _prefix()
    env = {
        "TURBO_CHANNEL_PREFIX": prefix,
        "TURBO_REDIS_TIMEOUT": str(REDIS_TIMEOUT),
        "TURBO_REDIS_HEALTH_CHECK_INTERVAL": "1",
        "TURBO_PING_INTERVAL": "1",
    }
    publisher = Publisher(redis_url, prefix=prefix)  # straight to Redis, not through the proxy
    with RedisProxy(redis_url) as proxy, _server(proxy.url, log_dir, worker_class, env) as web:
        pages = [Page(web, board) for board in (1, 1, 2)]
        later_cookie = open_session(web.base_url)  # a page rendered now, connecting in the outage
        later_url = page_stream_url(web.base_url, "/", later_cookie)
        numbered = Numbered(publisher, pages)
        try:
            numbered.round()
            for page in pages:
                page.read_all(timeout=10)

            proxy.pause()
            log_mark = len(web.log())
            status, elapsed = _handshake(later_url, later_cookie, timeout=REFUSAL_BOUND + 3)
            assert (status, elapsed <= REFUSAL_BOUND) == (503, True), (
                f"a handshake while Redis hangs: HTTP {status} after {elapsed:.2f}s "
                f"(want 503 within {REFUSAL_BOUND}s)"
            )
            refusal = re.compile(r"(WARNING|ERROR) turbocast[\w.]*: .*(handshake|503)")
            wait_for(
                lambda: refusal.search(web.log()[log_mark:]),
                timeout=5,
                what="a log line about the refused handshake",
            )

            # Messages keep being published (to Redis itself) while the web server
            # cannot reach it; the outage lasts OUTAGE_SECONDS, paced by this schedule.
            started = time.monotonic()
            ticks = 10
            for tick in range(ticks):
                due = started + tick * OUTAGE_SECONDS / ticks
                wait_for(lambda due=due: time.monotonic() >= due, timeout=OUTAGE_SECONDS + 5)
                numbered.round()
            closed = [p.sid[:8] for p in pages if not (p.client.ws and p.client.ws.connected)]
            assert not closed, f"sockets closed during the outage: {closed}"

            proxy.resume()
            for page in pages:  # what was published meanwhile: the catch-up
                page.read_all(timeout=30)
            numbered.round()  # live again
            for page in pages:
                page.read_all(timeout=10)
            for page in pages:
                assert page.client.ws is not None
                # Nothing more is on its way (no second copy of anything).
                extra = page.client.ws.receive(timeout=0.5)
                assert extra is None, f"unexpected message: {extra!r}"[:300]
                assert page.got() == page.expected
                assert page.client.ws.connected, "the same socket throughout"

            # New sockets are admitted again once the relay is back.
            wait_for(
                lambda: _handshake(later_url, later_cookie, timeout=5)[0] == 101,
                timeout=30,
                interval=0.5,
                what="a handshake to succeed after the outage",
            )
        finally:
            proxy.resume()
            for page in pages:
                page.client.close()
            publisher.close()


@pytest.mark.timeout(60)
def test_a_publish_whose_reply_was_lost_reaches_a_client_exactly_once(redis_url, log_dir):
    prefix = _prefix()
    env = {"TURBO_CHANNEL_PREFIX": prefix}
    with RedisProxy(redis_url) as proxy, _server(redis_url, log_dir, "gthread", env) as web:
        cookie = open_session(web.base_url)
        sid = session_id_of(cookie)
        url = page_stream_url(web.base_url, "/", cookie)
        earlier = page_stream_url(web.base_url, "/", cookie)  # another tab, connecting later
        client = ResumingClient(url, cookie).connect()
        publisher = Publisher(proxy.url, prefix=prefix, timeout=0.5)
        tab: ResumingClient | None = None
        try:
            publisher.to_session(sid, _stream(0))  # through the proxy; loads the script too
            proxy.drop_reply("EVALSHA")
            publisher.to_session(sid, _stream(1))  # Redis runs it; the reply never comes
            assert proxy.dropped == 1, "the proxy must have swallowed one EVALSHA reply"
            publisher.to_session(sid, _stream(2))
            for _ in range(3):
                client.next(timeout=10)
            assert client.ws is not None
            extra = client.ws.receive(timeout=0.5)
            assert extra is None, f"a second copy arrived: {extra!r}"[:300]
            assert [_number(h) for _, _, _, h in client.received] == [0, 1, 2]

            # The history holds it once too: a tab rendered before it replays it once.
            tab = ResumingClient(earlier, cookie).connect()
            for _ in range(3):
                tab.next(timeout=10)
            assert tab.ws is not None
            extra = tab.ws.receive(timeout=0.5)
            assert extra is None, f"the replay holds a second copy: {extra!r}"[:300]
            assert [_number(h) for _, _, _, h in tab.received] == [0, 1, 2]
        finally:
            client.close()
            if tab is not None:
                tab.close()
            publisher.close()


def test_the_proxy_forwards_holds_and_drops_as_told(redis_url):
    """The tool itself: through, held while paused, one reply swallowed."""
    import redis

    with RedisProxy(redis_url) as proxy:
        via = redis.Redis.from_url(proxy.url, socket_timeout=0.5)
        direct = redis.Redis.from_url(redis_url)
        key = f"proxy-check:{secrets.token_hex(4)}"
        try:
            assert via.set(key, "x" * 100_000) and via.get(key) == b"x" * 100_000
            proxy.pause()
            with pytest.raises(redis.TimeoutError):
                via.incr(key + ":n")
            assert direct.get(key + ":n") is None  # held, not forwarded
            proxy.resume()
            script = via.register_script("return redis.call('INCR', KEYS[1])")
            assert script(keys=[key + ":s"]) == 1
            proxy.drop_reply("EVALSHA")
            with pytest.raises(redis.TimeoutError):
                script(keys=[key + ":s"])
            assert direct.get(key + ":s") == b"2"  # Redis ran it
            assert script(keys=[key + ":s"]) == 3
            assert proxy.dropped == 1
        finally:
            direct.delete(key, key + ":n", key + ":s")
            via.close()
            direct.close()
