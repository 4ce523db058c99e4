"""The Prometheus metrics of a real two-worker gunicorn, scraped under load.

One scrape of ``/metrics`` (the demo's, :func:`turbocast.metrics_view`) answers for both
workers (prometheus-client's multiprocess mode). Every counter is checked against what
the test did: sockets opened on three transports, all at once on a cold server; messages
published by the app's views and delivered to every socket; a resume that replays, one
that finds a gap; a client that stops reading until its outbox overflows; Redis stopped
and started again (a reconnect per relay, its outage in seconds, a publish that failed).
The latency histogram counts exactly the messages delivered.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis
from markupsafe import Markup
from prometheus_client.parser import text_string_to_metric_families
from simple_websocket import ConnectionClosed

from app.embedded_redis import EmbeddedRedis
from tests.support import (
    Client,
    RawClient,
    WebServer,
    _request,
    http_connection,
    numsub,
    open_session,
    session_id_of,
    wait_for,
)
from turbocast import CLOSE_OUTBOX_OVERFLOW, SUBPROTOCOL, Publisher, TurboStream, channel_for
from turbocast.metrics import NAMES

SESSIONS = 6
NUDGES = 4  # messages each session's view publishes
BIG = 120  # 64 KiB messages to the client that stops reading: far past the socket buffers

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(web: WebServer) -> Samples:
    """Every turbocast sample of one scrape, summed over the workers (the ``pid`` label)."""
    conn = http_connection(web.base_url, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, text[:500]
    samples: Samples = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("turbocast_"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
                samples[sample.name, labels] += sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def open_sockets(samples: Samples) -> float:
    return sum(
        value(samples, "turbocast_sockets_open", transport=t) for t in ("turbo", "websocket", "sse")
    )


def worker_pids(web: WebServer, *, connected: bool = True) -> list[int]:
    """The processes whose relay is connected (``pid`` label of ``turbocast_relay_connected``),
    or, with ``connected=False``, every process that has turbocast loaded (its gauge is 0)."""
    conn = http_connection(web.base_url, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sorted(
        int(sample.labels["pid"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "turbocast_relay_connected" and (sample.value == 1 or not connected)
    )


def relays_connected(web: WebServer) -> int:
    return int(value(scrape(web), "turbocast_relay_connected"))


class Socket:
    """A WebSocket client that keeps every message it receives, in a thread of its own."""

    def __init__(self, web: WebServer, cookie: str, *, tagged: bool, since: str = "") -> None:
        url = web.ws_url + (f"?since={quote(since)}" if since else "")
        self.ws = Client.connect(
            url, headers={"Cookie": cookie}, subprotocols=[SUBPROTOCOL] if tagged else None
        )
        self.tagged = tagged
        self.messages: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                message = self.ws.receive()
            except Exception:  # noqa: BLE001 - closed
                return
            if message is None:
                return
            if self.tagged and str(message).startswith("i "):
                continue  # its socket id, not a message
            self.messages.append(str(message))

    @property
    def open(self) -> bool:
        return bool(self.ws.connected)

    def close(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            self.ws.close()  # (raises when the server closed it already)


class EventStream:
    """A Server-Sent Events client that keeps every event's data, in a thread of its own."""

    def __init__(self, web: WebServer, cookie: str) -> None:
        parts = urlsplit(web.base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.conn.request("GET", "/turbo-stream/events", headers={"Cookie": cookie})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.messages: list[str] = []
        self.open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        data: list[str] = []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    data.append(line[6:])
                elif not line and data:
                    self.messages.append("\n".join(data))
                    data = []
        except Exception:  # noqa: BLE001 - cut off (closed here, or its worker killed)
            pass
        self.open = False

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)  # its reader sees the end and lets go of the response
        self.conn.close()


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    redis_server = EmbeddedRedis().start()
    yield redis_server
    redis_server.close()


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_one_scrape_counts_what_both_workers_did(
    server, log_dir: Path, tmp_path: Path, worker_class: str
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "TURBO_OUTBOX_BYTES": "16384",
        "TURBO_SEND_TIMEOUT": "60",
        "TURBO_REDIS_TIMEOUT": "1",
        "TURBO_REDIS_HEALTH_CHECK_INTERVAL": "1",
        "TURBO_PING_INTERVAL": "5",
    }
    web = WebServer(server.url, env=env, workers=2, threads=48, worker_class=worker_class).start(
        log_dir
    )
    client = redis.Redis.from_url(server.url)

    def processes(cookie: str) -> int:
        """How many web processes hold a socket of this cookie's session."""
        return numsub(client, channel_for(session_id_of(cookie)))

    publisher = Publisher(server.url)
    sockets: dict[str, list[Socket]] = {}
    streams: list[EventStream] = []
    slow: RawClient | None = None
    try:
        # Both workers up (gunicorn answered once one was): each has its gauge at 0.
        wait_for(
            lambda: len(worker_pids(web, connected=False)) == 2,
            timeout=30,
            interval=0.2,
            what="both workers to load the app",
        )
        before = scrape(web)
        assert {n for n, _ in before} <= {
            *NAMES,
            *(f"{n}_{s}" for n in NAMES for s in ("bucket", "count", "sum")),
        }
        assert value(before, "turbocast_sockets_opened_total", transport="turbo") == 0

        # -- Many pages at once on a cold server: two plain sockets and a tagged one per
        # session, opened together, until both workers hold some (their relays connect).
        cookies = [open_session(web.base_url) for _ in range(SESSIONS)]

        def page(cookie: str) -> list[Socket]:
            return [
                Socket(web, cookie, tagged=False),
                Socket(web, cookie, tagged=False),
                Socket(web, cookie, tagged=True),
            ]

        for _ in range(8):
            with ThreadPoolExecutor(len(cookies)) as pool:
                for cookie, opened in zip(cookies, pool.map(page, cookies), strict=True):
                    sockets.setdefault(cookie, []).extend(opened)
            if relays_connected(web) == 2:
                break
        assert relays_connected(web) == 2, "both workers must hold sockets: open more at once"
        streams.append(EventStream(web, cookies[0]))
        plain = sum(1 for group in sockets.values() for s in group if not s.tagged)
        tagged = sum(1 for group in sockets.values() for s in group if s.tagged)
        every = [s for group in sockets.values() for s in group]

        samples = wait_for(
            lambda: (
                (s := scrape(web))
                and value(s, "turbocast_sockets_open", transport="sse") == 1
                and s
            ),
            what="the event stream to count as open",
        )
        for transport, count in (("turbo", plain), ("websocket", tagged), ("sse", 1)):
            assert value(samples, "turbocast_sockets_open", transport=transport) == count
            assert value(samples, "turbocast_sockets_opened_total", transport=transport) == count

        # -- Each session's view publishes NUDGES messages (the app's publishes, counted by
        # the workers); every socket of the session gets each one.
        for cookie in cookies:
            for _ in range(NUDGES):
                status, *_ = _request(web.base_url, "POST", "/tabs/nudge", cookie)
                assert status == 303
        targets = [*every, *streams]
        wait_for(
            lambda: all(len(s.messages) >= NUDGES for s in targets),
            what="every socket to receive its session's messages",
        )
        fanout = sum(len(s.messages) for s in targets)
        assert fanout == NUDGES * len(targets)
        # Each message is delivered once by each web process holding a socket of its
        # session: as many as Redis counts subscribed to the session's channel.
        delivered = sum(NUDGES * processes(cookie) for cookie in cookies)
        assert SESSIONS * NUDGES <= delivered <= 2 * SESSIONS * NUDGES
        samples = scrape(web)
        assert value(samples, "turbocast_publishes_total") == SESSIONS * NUDGES
        assert value(samples, "turbocast_publish_errors_total") == 0
        assert value(samples, "turbocast_messages_delivered_total") == delivered
        assert value(samples, "turbocast_delivery_latency_seconds_count") == delivered
        assert value(samples, "turbocast_delivery_latency_seconds_sum") > 0
        assert value(samples, "turbocast_socket_messages_total") == fanout
        assert value(samples, "turbocast_replayed_messages_total") == 0

        # -- A tagged socket comes back from its first message: the other three are replayed.
        # One that comes back from a position the history never held gets a gap.
        first = next(s for s in sockets[cookies[1]] if s.tagged)
        label, position = first.messages[0].split("\n", 1)[0].split()[1:3]
        first.close()
        resumed = Socket(web, cookies[1], tagged=True, since=f"{label}~{position}")
        lost = Socket(web, cookies[2], tagged=True, since=f"{label}~1-0")
        sockets[cookies[1]].append(resumed)
        sockets[cookies[2]].append(lost)
        wait_for(lambda: len(resumed.messages) == NUDGES - 1 and len(lost.messages) == 1)
        assert 'action="refresh"' in lost.messages[0]
        samples = scrape(web)
        assert value(samples, "turbocast_replayed_messages_total") == NUDGES - 1
        assert value(samples, "turbocast_replay_gaps_total") == 1
        assert value(samples, "turbocast_messages_delivered_total") == delivered
        assert value(samples, "turbocast_socket_messages_total") == fanout

        # -- A client that stops reading: its outbox overflows (4001). A message to everyone
        # after the big ones: once every socket has it, both relays have tried every put.
        slow_cookie = open_session(web.base_url)
        slow = RawClient(web.ws_url, slow_cookie, rcvbuf=4096)
        slow_sid = session_id_of(slow_cookie)
        wait_for(
            lambda: value(scrape(web), "turbocast_sockets_open", transport="turbo") == plain + 1,
            interval=0.2,
        )
        big = TurboStream.update("blob", Markup("x" * 64 * 1024))
        # Each publish says how many web processes got it: each delivered it once.
        for _ in range(BIG):
            delivered += publisher.to_session(slow_sid, big)
        delivered += publisher.to_all(TurboStream.update("marker", "after"))
        live = [s for s in [*every, *streams, resumed, lost] if s is not first]
        wait_for(lambda: all(s.messages and "marker" in s.messages[-1] for s in live))
        received, close = slow.read_until_closed()
        assert close is not None and close.code == CLOSE_OUTBOX_OVERFLOW, close
        # (None at all when the relay put the first ones before the writer woke.)
        assert len(received) < BIG
        # Handed to sockets: what they got but the replay and the gap (counted apart), and
        # every message for the slow one (written, or thrown away).
        replayed = NUDGES - 1 + 1
        fanout = sum(len(s.messages) for s in [*live, first]) - replayed + BIG + 1
        samples = wait_for(
            lambda: (s := scrape(web)) and value(s, "turbocast_outbox_overflows_total") == 1 and s,
            interval=0.2,
            what="the overflowed socket to be counted once it closed",
        )
        # Every message for the slow socket was either written or thrown away.
        assert value(samples, "turbocast_messages_dropped_total") == BIG + 1 - len(received)
        assert value(samples, "turbocast_messages_delivered_total") == delivered
        assert value(samples, "turbocast_delivery_latency_seconds_count") == delivered
        assert value(samples, "turbocast_socket_messages_total") == fanout
        assert value(samples, "turbocast_publishes_total") == SESSIONS * NUDGES  # not the test's

        # -- Redis stops, a view's publish fails, Redis starts again: each relay reconnects
        # once, and the seconds it spent without Redis are counted.
        assert value(samples, "turbocast_relay_reconnects_total") == 0
        assert value(samples, "turbocast_redis_outage_seconds_total") == 0
        server.stop()
        stopped = time.monotonic()
        wait_for(lambda: relays_connected(web) == 0, interval=0.1, what="both relays to lose Redis")
        status, *_ = _request(web.base_url, "POST", "/tabs/nudge", cookies[0])
        assert status == 500
        wait_for(
            lambda: value(scrape(web), "turbocast_redis_outage_seconds_total") >= 2.0,
            timeout=30,
            interval=0.2,
            what="the outage to be counted while it lasts",
        )
        server.start()  # the same port, empty
        started = time.monotonic()
        wait_for(
            lambda: relays_connected(web) == 2,
            timeout=40,
            interval=0.1,
            what="both relays to reconnect",
        )
        back = time.monotonic()
        samples = scrape(web)
        assert value(samples, "turbocast_publish_errors_total") == 1
        assert value(samples, "turbocast_relay_reconnects_total") == 2
        outage = value(samples, "turbocast_redis_outage_seconds_total")
        # Each relay was without Redis from about the stop (it notices at once: the
        # connection closes) until it reconnected, after the start.
        assert 2 * (started - stopped - 1.0) <= outage <= 2 * (back - stopped + 0.5), (
            outage, started - stopped, back - stopped,
        )  # fmt: skip

        # -- Live again; then every socket closes and none is counted open.
        status, *_ = _request(web.base_url, "POST", "/tabs/nudge", cookies[3])
        assert status == 303
        wait_for(lambda: all(len(s.messages) > NUDGES + 1 for s in sockets[cookies[3]]))
        samples = scrape(web)
        assert value(samples, "turbocast_publishes_total") == SESSIONS * NUDGES + 1
        assert value(samples, "turbocast_messages_delivered_total") == delivered + processes(
            cookies[3]
        )
        assert value(samples, "turbocast_socket_messages_total") == fanout + len(
            sockets[cookies[3]]
        )
        assert value(samples, "turbocast_delivery_latency_seconds_count") == value(
            samples, "turbocast_messages_delivered_total"
        )
        slow.close()

        # -- A worker killed: gunicorn's master drops its gauges (child_exit), so only the
        # sockets the other worker still holds count as open; its counters stay.
        victim = worker_pids(web)[0]
        os.kill(victim, signal.SIGKILL)
        clients = [*(c for c in every if c is not first), resumed, lost, *streams]

        def settled() -> Samples | None:
            still = sum(1 for c in clients if c.open)
            samples = scrape(web)
            return samples if 0 < still < len(clients) and open_sockets(samples) == still else None

        samples = wait_for(
            settled, interval=0.2, what="the killed worker's sockets to leave the gauge"
        )
        assert victim not in worker_pids(web)
        assert value(samples, "turbocast_publishes_total") == SESSIONS * NUDGES + 1

        for c in clients:
            c.close()
        wait_for(
            lambda: open_sockets(scrape(web)) == 0,
            interval=0.2,
            what="every closed socket to be counted closed",
        )
    finally:
        web.stop()
        client.close()
        if slow is not None:
            slow.close()
        for group in sockets.values():
            for s in group:
                s.close()
        for stream in streams:
            stream.close()
        publisher.close()
