"""Traffic as it really arrives: cold processes, many pages at once, publishing that never waits.

No test here waits for a subscription before publishing or warms the relay
with a first socket: each starts its own gunicorn, so the first sockets meet a
process whose relay has not started, and publishers run while sockets connect.
Each test uses a channel prefix of its own, so the shared test Redis holds no
history or subscriber of anything else.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import secrets
import selectors
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis
import simple_websocket
from markupsafe import Markup

from tests.support import (
    ROOT,
    RawClient,
    ResumingClient,
    WebServer,
    connect,
    login,
    numsub,
    open_session,
    page_stream_url,
    session_id_of,
    wait_for,
)
from turbocast import CLOSE_OUTBOX_OVERFLOW, Publisher, TurboStream
from turbocast.channels import broadcast_channel, history_key, stream_channel

PY_SPY = Path(sys.executable).with_name("py-spy")
REFRESH = '<turbo-stream action="refresh"></turbo-stream>'


@pytest.fixture(params=["gthread", "gevent"])
def worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _prefix() -> str:
    return f"arr{secrets.token_hex(4)}"


@contextlib.contextmanager
def _server(
    redis_url: str, log_dir: Path, worker_class: str, env: dict[str, str], workers: int = 1
) -> Iterator[WebServer]:
    """A fresh gunicorn: no socket has ever reached its workers."""
    web = WebServer(
        redis_url, env=env, worker_class=worker_class, workers=workers, threads=100
    ).start(log_dir)
    try:
        yield web
    finally:
        web.stop()


def _worker_pids(master: int) -> list[int]:
    """The gunicorn master's children: its workers."""
    children: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(p) for p in (task / "children").read_text().split()]
    return sorted(children)


def _started(log: str, what: str) -> Counter[int]:
    """How many times each process logged ``turbocast: <what> started``."""
    return Counter(
        int(pid) for pid in re.findall(rf"\[(\d+)\].*turbocast\.\w+: {what} started", log)
    )


def _threads(pid: int) -> Counter[str]:
    """The names of a process's threads, by py-spy."""
    out = subprocess.run(
        [str(PY_SPY), "dump", "--pid", str(pid)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return Counter(re.findall(r'^Thread \S+ \(\w+\): "([^"]*)"', out, re.MULTILINE))


# -- 1. many pages at once on a cold two-worker server ---------------------------------------

USERS = ["ann", "bob", "cy", "dee", "eve"]
BOARDS = [1, 2, 3]
_TAG = re.compile(r'data-m="(\d+)-(\d+)" data-to="(\w+):([^"]*)"')


@dataclass
class Page:
    cookie: str
    sid: str
    user: str | None
    board: int | None
    url: str

    @property
    def addresses(self) -> set[tuple[str, str]]:
        found = {("session", self.sid), ("all", "")}
        if self.user:
            found.add(("user", self.user))
        if self.board:
            found.add(("stream", f"board:{self.board}"))
        return found


def _render_pages(web: WebServer, count: int) -> list[Page]:
    """Pages as browsers render them: anonymous or signed in, the home page or a board."""
    pages = []
    for i in range(count):
        cookie = open_session(web.base_url)
        user = USERS[i % len(USERS)] if i % 3 else None
        if user:
            cookie = login(web.base_url, cookie, user)
        board = BOARDS[i % len(BOARDS)] if i % 2 else None
        path = f"/boards/{board}" if board else "/"
        url = page_stream_url(web.base_url, path, cookie)
        pages.append(Page(cookie, session_id_of(cookie), user, board, url))
    return pages


class Listener(threading.Thread):
    """One page's socket: connects when the barrier opens, then collects what it gets."""

    def __init__(self, page: Page, barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.page = page
        self.barrier = barrier
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.ws: simple_websocket.Client | None = None
        self.error: BaseException | None = None
        self.closed: str | None = None
        #: (publisher thread, number, kind, key) of every tagged message, in arrival order.
        self.received: list[tuple[int, int, str, str]] = []

    def run(self) -> None:
        try:
            self.barrier.wait(timeout=60)
            self.ws = connect(self.page.url, self.page.cookie)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            return
        finally:
            self.opened.set()
        try:
            while not self.stop.is_set():
                message = self.ws.receive(timeout=0.2)
                if message is not None:
                    for t, n, kind, key in _TAG.findall(str(message)):
                        self.received.append((int(t), int(n), kind, key))
        except simple_websocket.ConnectionClosed as exc:
            self.closed = f"{exc.reason} {exc.message}"
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


class Observer(threading.Thread):
    """A socket that counts the heartbeat pings it gets (and answers them)."""

    def __init__(self, web: WebServer, cookie: str, barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.web, self.cookie, self.barrier = web, cookie, barrier
        self.client: RawClient | None = None
        self.opened = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.barrier.wait(timeout=60)
            self.client = RawClient(self.web.ws_url, self.cookie, rcvbuf=1 << 20)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.opened.set()


def _storm(
    redis_url: str, prefix: str, pages: list[Page], threads: int, per_thread: int
) -> tuple[list[tuple[int, int, str, str]], list[int]]:
    """Publish from several threads at once to sessions, users, boards and everyone.

    :returns: what was sent (thread, number, kind, key), and what each broadcast returned.
    """
    addresses = (
        [("session", p.sid) for p in pages]
        + [("user", u) for u in USERS]
        + [("stream", f"board:{b}") for b in BOARDS]
        + [("all", "")] * 8
    )
    sent: list[list[tuple[int, int, str, str]]] = [[] for _ in range(threads)]
    broadcasts: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def publish(t: int) -> None:
        publisher = Publisher(redis_url, prefix=prefix)
        send = {
            "session": publisher.to_session,
            "user": publisher.to_user,
            "stream": publisher.to_stream,
            "all": lambda _key, stream: publisher.to_all(stream),
        }
        rng = random.Random(t)
        try:
            for n in range(per_thread):
                kind, key = rng.choice(addresses)
                html = Markup('<p data-m="{}-{}" data-to="{}:{}"></p>').format(t, n, kind, key)
                receivers = send[kind](key, TurboStream.append("log", html))
                sent[t].append((t, n, kind, key))
                if kind == "all":
                    broadcasts[t].append(receivers)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            publisher.close()

    workers = [threading.Thread(target=publish, args=(t,), daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors[:3]
    assert not any(w.is_alive() for w in workers), "a storm publisher did not finish"
    return [m for ms in sent for m in ms], [r for rs in broadcasts for r in rs]


@pytest.mark.timeout(150)
def test_pages_arriving_at_once_meet_one_relay_and_one_heartbeat_per_process(
    redis_url, log_dir, worker_class
):
    prefix = _prefix()
    env = {"TURBO_CHANNEL_PREFIX": prefix, "TURBO_PING_INTERVAL": "2"}
    with _server(redis_url, log_dir, worker_class, env, workers=2) as web:
        pages = _render_pages(web, 70)
        barrier = threading.Barrier(len(pages) + 1)
        listeners = [Listener(page, barrier) for page in pages]
        observer = Observer(web, open_session(web.base_url), barrier)
        for thread in [*listeners, observer]:
            thread.start()
        probe = redis.Redis.from_url(redis_url)
        try:
            wait_for(
                lambda: observer.opened.is_set() and all(x.opened.is_set() for x in listeners),
                timeout=60,
                what="every page's socket to open",
            )
            refused = [repr(x.error) for x in listeners if x.error]
            refused += [repr(observer.error)] if observer.error else []
            assert not refused, refused[:5]

            log = web.log()
            assert web.process is not None
            pids = _worker_pids(web.process.pid)
            assert len(pids) == 2, pids
            facts = {
                "relay started": dict(_started(log, "relay")),
                "heartbeat started": dict(_started(log, "heartbeat")),
                "broadcast subscribers": numsub(probe, broadcast_channel(prefix)),
            }
            expected = {
                "relay started": dict.fromkeys(pids, 1),
                "heartbeat started": dict.fromkeys(pids, 1),
                "broadcast subscribers": 2,
            }
            if worker_class == "gthread":
                for pid in pids:
                    names = _threads(pid)
                    facts[f"threads of {pid}"] = {
                        n: names[n] for n in ("turbo-relay", "turbo-heartbeat")
                    }
                    expected[f"threads of {pid}"] = {"turbo-relay": 1, "turbo-heartbeat": 1}
            assert facts == expected

            # Five heartbeats, as the observer counts them; every page answers its pings.
            assert observer.client is not None
            pings = observer.client.pings(5, answer=True, timeout=10)
            closed = [(x.page.sid[:8], x.closed or repr(x.error)) for x in listeners if x.closed]
            assert (pings, closed) == (5, []), "sockets closed while answering heartbeats"
            assert "socket closed" not in web.log()
            observer.client.close()

            sent, broadcasts = _storm(redis_url, prefix, pages, threads=3, per_thread=1000)
            assert len(sent) == 3000
            assert {kind for _, _, kind, _ in sent} == {"session", "user", "stream", "all"}
            assert broadcasts and set(broadcasts) == {2}, Counter(broadcasts)

            expected_by = {
                id(x): [m for m in sent if (m[2], m[3]) in x.page.addresses] for x in listeners
            }
            with contextlib.suppress(AssertionError):
                wait_for(
                    lambda: all(
                        len(x.received) >= len(expected_by[id(x)]) or x.closed or x.error
                        for x in listeners
                    ),
                    timeout=60,
                    what="every message to reach its addressees",
                )
            report: Counter[str] = Counter()
            examples: dict[str, tuple[str, list[Any]]] = {}
            for listener in listeners:
                got, want = listener.received, expected_by[id(listener)]
                problems: dict[str, list[Any]] = {
                    "misdelivered": [m for m in got if (m[2], m[3]) not in listener.page.addresses],
                    "duplicated": [m for m, c in Counter(got).items() if c > 1],
                    "missing": sorted(set(want) - set(got)),
                    "out of order": [
                        t
                        for t in range(3)
                        if [n for tt, n, *_ in got if tt == t]
                        != sorted(n for tt, n, *_ in got if tt == t)
                    ],
                    "closed": [listener.closed] if listener.closed else [],
                }
                for name, found in problems.items():
                    report[name] += len(found)
                    if found and name not in examples:
                        examples[name] = (listener.page.sid[:8], found[:3])
            assert sum(len(w) for w in expected_by.values()) > 3000  # broadcasts reach all 70
            assert not +report, (dict(report), examples)
        finally:
            for listener in listeners:
                listener.stop.set()
            for listener in listeners:
                listener.join(timeout=5)
                if listener.ws is not None:
                    with contextlib.suppress(simple_websocket.ConnectionClosed):
                        listener.ws.close()  # (raises when the server closed it first)
            if observer.client is not None:
                observer.client.close()
            probe.close()


# -- 2. sockets connecting while a publisher never pauses ------------------------------------

ALTERNATING_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from markupsafe import Markup
    from turbocast import Publisher, TurboStream

    url, prefix, stream = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds, limit, maxlen = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    publisher = Publisher(url, prefix=prefix, history_maxlen=maxlen)
    deadline = time.monotonic() + seconds
    n = 0
    while n < limit and time.monotonic() < deadline:
        message = TurboStream.append("log", Markup('<p data-n="{}"></p>').format(n))
        if n % 2 == 0:
            publisher.to_stream(stream, message)
        else:
            publisher.to_all(message)
        n += 1
    """
)
#: The history must outlast a page's render-to-connect, even at full publishing speed.
HISTORY = 200_000
#: Messages each socket reads before it closes: its replay (what was published between
#: the render and the connect) and well past the moment it went live.
PER_SOCKET = 150


def _number(html: str) -> int:
    match = re.search(r'data-n="(\d+)"', html)
    assert match, html[:200]
    return int(match.group(1))


@contextlib.contextmanager
def _alternating_publisher(redis_url: str, prefix: str, stream: str) -> Iterator[None]:
    """Publishes n = 0, 1, 2, ... as fast as it can: even to ``stream``, odd to everyone."""
    process = subprocess.Popen(
        [sys.executable, "-c", ALTERNATING_PUBLISHER, redis_url, prefix, stream,
         "100", "5000000", str(HISTORY)],
        cwd=ROOT,
    )  # fmt: skip
    probe = redis.Redis.from_url(redis_url)
    try:
        keys = [
            history_key(stream_channel(stream, prefix), prefix),
            history_key(broadcast_channel(prefix), prefix),
        ]
        wait_for(
            lambda: process.poll() is None and all(probe.xlen(k) >= 10 for k in keys),
            timeout=30,
            what="the publisher to be running",
        )
        yield
        assert process.poll() is None, "the publisher stopped early"
    finally:
        process.terminate()
        process.wait(timeout=10)
        probe.close()


def _since(url: str) -> dict[str, str]:
    """The positions a page's socket URL carries: ``{label: id}``."""
    return dict(v.split("~", 1) for k, v in parse_qsl(urlsplit(url).query) if k == "since")


def _expected_after(probe: redis.Redis, prefix: str, url: str, stream: str) -> list[int]:
    """What a page must get: every number published after the positions it carries, in order.

    Each position is looked up in its channel's history: the number of the
    message at it. Even numbers go to ``stream``, odd ones to everyone.
    """
    since = _since(url)
    after: dict[int, int] = {}
    for label, channel, parity in (
        (f"t:{stream}", stream_channel(stream, prefix), 0),
        ("b", broadcast_channel(prefix), 1),
    ):
        if label not in since:
            continue
        position = since[label]
        assert position != "0-0", f"{label}: the page was rendered before any message"
        entries: Any = probe.xrange(history_key(channel, prefix), min=position, max=position)
        assert entries, f"{label}~{position} is no longer in the history"
        after[parity] = _number(entries[0][1][b"d"].decode())
    start = min(after.values()) + 1
    return [n for n in range(start, start + 4 * PER_SOCKET) if n % 2 in after and n > after[n % 2]]


def _check_arrivals(got: list[int], want: list[int], count: int) -> str | None:
    """``None`` when ``got`` is the first ``count`` of ``want``; else what went wrong."""
    if got == want[:count]:
        return None
    wanted = set(want)
    lost: list[int] = []
    for parity in (0, 1):  # per channel, so that a wrong order does not count as a loss
        mine = {n for n in got if n % 2 == parity}
        if mine:
            lost += [n for n in want if n % 2 == parity and n < max(mine) and n not in mine]
    twice = sorted(n for n, c in Counter(got).items() if c > 1)
    stale = [n for n in got if n not in wanted]
    swap = next((i for i in range(1, len(got)) if got[i] < got[i - 1]), None)
    order = (
        "in order"
        if swap is None
        else f"OUT OF ORDER at #{swap}: {got[max(0, swap - 3) : swap + 3]}"
    )
    return (
        f"want {want[:3]}..., got {got[:4]}... ({len(got)}): {order}, "
        f"lost {len(lost)} {sorted(lost)[:5]}, twice {twice[:5]}, "
        f"from before the render {stale[:5]}"
    )


@pytest.mark.timeout(150)
def test_sockets_connecting_under_a_nonstop_publisher_miss_nothing_after_their_render(
    redis_url, log_dir, worker_class
):
    prefix = _prefix()
    env = {"TURBO_CHANNEL_PREFIX": prefix, "TURBO_HISTORY_MAXLEN": str(HISTORY)}
    probe = redis.Redis.from_url(redis_url)
    failures: list[str] = []
    with (
        _server(redis_url, log_dir, worker_class, env, workers=2) as web,
        _alternating_publisher(redis_url, prefix, "board:1"),
    ):
        cookies = [open_session(web.base_url) for _ in range(10)]
        for i in range(300):
            cookie = cookies[i % len(cookies)]
            path = "/" if i % 5 == 4 else "/boards/1"  # some pages hear only broadcasts
            url = page_stream_url(web.base_url, path, cookie)
            want = _expected_after(probe, prefix, url, "board:1")
            client = ResumingClient(url, cookie).connect()
            try:
                for _ in range(PER_SOCKET):
                    client.next(timeout=5)
            except (AssertionError, simple_websocket.ConnectionClosed) as exc:
                failures.append(f"socket {i}: {exc!r}")
            finally:
                client.close()
            kinds = {kind for kind, *_ in client.received}
            got = [_number(h) for k, _, _, h in client.received if k == "m"]
            problem = _check_arrivals(got, want, PER_SOCKET) if kinds == {"m"} else "a gap"
            if problem:
                failures.append(f"socket {i} ({path}): {problem}")
            if len(failures) >= 20:
                break
    probe.close()
    assert not failures, f"{len(failures)} sockets (stopped at 20):\n" + "\n".join(failures)


class EventStream:
    """An ``EventSource`` by hand: reads the ``data:`` of each event."""

    def __init__(self, url: str, cookie: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sock.sendall(
            # HTTP/1.0: the body comes as it is, without chunked framing.
            f"GET {parts.path}?{parts.query} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
            f"Accept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        assert status.split()[1] == b"200", status
        while self.file.readline() not in (b"\r\n", b""):
            pass  # the headers

    def next(self) -> str:
        data: list[str] = []
        while True:
            line = self.file.readline()
            if not line:
                raise AssertionError("the event stream ended")
            text = line.decode().rstrip("\r\n")
            if text.startswith("data: "):
                data.append(text[6:])
            elif text == "" and data:
                return "\n".join(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.timeout(120)
def test_event_streams_opening_under_a_nonstop_publisher_miss_nothing_after_their_render(
    redis_url, log_dir, worker_class
):
    prefix = _prefix()
    env = {
        "TURBO_CHANNEL_PREFIX": prefix,
        "TURBO_HISTORY_MAXLEN": str(HISTORY),
        "TURBO_TRANSPORT": "sse",
    }
    probe = redis.Redis.from_url(redis_url)
    failures: list[str] = []
    with (
        _server(redis_url, log_dir, worker_class, env, workers=2) as web,
        _alternating_publisher(redis_url, prefix, "board:1"),
    ):
        cookies = [open_session(web.base_url) for _ in range(10)]
        for i in range(50):
            cookie = cookies[i % len(cookies)]
            url = page_stream_url(web.base_url, "/boards/1", cookie)
            assert "/turbo-stream/events?" in url, url
            want = _expected_after(probe, prefix, url, "board:1")
            stream = EventStream(url, cookie)
            got: list[int] = []
            try:
                for _ in range(PER_SOCKET):
                    got.append(_number(stream.next()))
            except (AssertionError, OSError) as exc:
                failures.append(f"stream {i}: {exc!r}")
            finally:
                stream.close()
            problem = _check_arrivals(got, want, PER_SOCKET)
            if problem:
                failures.append(f"stream {i}: {problem}")
            if len(failures) >= 20:
                break
    probe.close()
    assert not failures, f"{len(failures)} event streams (stopped at 20):\n" + "\n".join(failures)


# -- 3. a page rendered before its channel's first message ------------------------------------


@pytest.mark.timeout(60)
def test_a_page_of_an_empty_channel_that_missed_more_than_the_history_gets_the_gap(
    redis_url, log_dir, worker_class
):
    prefix = _prefix()
    maxlen = 50
    env = {"TURBO_CHANNEL_PREFIX": prefix, "TURBO_HISTORY_MAXLEN": str(maxlen)}
    publisher = Publisher(redis_url, prefix=prefix, history_maxlen=maxlen)
    clients: list[ResumingClient] = []
    with _server(redis_url, log_dir, worker_class, env) as web:
        try:
            # Two pages, both rendered while their session and board are empty (``~0-0``).
            # Page A's board then gets more than the history holds, its session fewer;
            # page B's session more, its board fewer.
            pages = []
            for board in (7, 8):
                cookie = open_session(web.base_url)
                url = page_stream_url(web.base_url, f"/boards/{board}", cookie)
                since = _since(url)
                assert (since["s"], since[f"t:board:{board}"]) == ("0-0", "0-0"), since
                pages.append((cookie, session_id_of(cookie), board, url))
            (_, sid_a, board_a, _), (_, sid_b, board_b, _) = pages
            for n in range(maxlen + 10):
                publisher.to_stream(f"board:{board_a}", TurboStream.append("log", f"a{n}"))
                publisher.to_session(sid_b, TurboStream.append("log", f"b{n}"))
            for n in range(10):
                publisher.to_session(sid_a, TurboStream.append("log", f"a{n}"))
                publisher.to_stream(f"board:{board_b}", TurboStream.append("log", f"b{n}"))

            for (cookie, _, board, url), gap_label, whole_label in (
                (pages[0], f"t:board:{board_a}", "s"),
                (pages[1], "s", f"t:board:{board_b}"),
            ):
                client = ResumingClient(url, cookie).connect()
                clients.append(client)
                for _ in range(11):
                    client.next(timeout=10)
                by_label: dict[str, list[tuple[str, str]]] = {}
                for kind, label, _, html in client.received:
                    by_label.setdefault(label, []).append((kind, html))
                letter = "a" if board == board_a else "b"
                assert by_label.get(gap_label) == [("g", REFRESH)], (
                    f"{gap_label}: want the gap signal, got {by_label.get(gap_label)}"
                )
                assert [kind for kind, _ in by_label.get(whole_label, [])] == ["m"] * 10
                assert [h for _, h in by_label[whole_label]] == [
                    str(TurboStream.append("log", f"{letter}{n}")) for n in range(10)
                ]
                # Live afterwards, with nothing stale replayed.
                if gap_label == "s":
                    publisher.to_session(sid_b, TurboStream.append("log", "live"))
                else:
                    publisher.to_stream(f"board:{board}", TurboStream.append("log", "live"))
                kind, label, _, html = client.next(timeout=10)
                live = str(TurboStream.append("log", "live"))
                assert (kind, label, html) == ("m", gap_label, live)
        finally:
            for client in clients:
                client.close()
            publisher.close()


# -- 4. bursts: fast clients keep up, a stalled one does not hold anyone up --------------------


class FastReaders:
    """Many ``turbocast.v1`` sockets read by one thread as fast as the kernel hands bytes over.

    During a burst it only ``recv``s (with a timestamp per chunk); frames are parsed
    afterwards, so the reader costs almost nothing and never becomes the bottleneck.
    It does not answer pings: run the server with a long ``TURBO_PING_INTERVAL``.
    """

    def __init__(self, pages: list[tuple[str, str]]) -> None:
        self.socks: list[socket.socket] = []
        self.chunks: list[list[tuple[float, bytes]]] = []
        self.eof: list[bool] = []
        for url, cookie in pages:
            sock, rest = self._handshake(url, cookie)
            self.socks.append(sock)
            self.chunks.append([(time.time(), rest)] if rest else [])
            self.eof.append(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name="fast-readers")
        self._thread.start()

    @staticmethod
    def _handshake(url: str, cookie: str) -> tuple[socket.socket, bytes]:
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: turbocast.v1\r\n"
            f"Cookie: {cookie}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, f"the server hung up during the handshake: {head!r}"
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.setblocking(False)
        return sock, rest

    def _read(self) -> None:
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(self.socks):
            selector.register(sock, selectors.EVENT_READ, i)
        open_count = len(self.socks)
        while open_count and not self._stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                i = key.data
                try:
                    data = self.socks[i].recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.chunks[i].append((time.time(), data))
                else:
                    self.eof[i] = True
                    selector.unregister(self.socks[i])
                    open_count -= 1
        selector.close()

    def tagged(self, i: int) -> int:
        """How many burst messages socket ``i`` got so far (cheap: a byte count)."""
        return b"".join(data for _, data in self.chunks[i]).count(b' data-m="')

    def frames(self, i: int) -> tuple[list[tuple[float, str]], int | None]:
        """Socket ``i``'s text messages so far, each with when its last byte came; and the
        close code, if the server closed it.
        """
        buf = b"".join(data for _, data in self.chunks[i])
        ends = []  # (end offset in buf, time) of each chunk
        offset = 0
        for t, data in self.chunks[i]:
            offset += len(data)
            ends.append((offset, t))
        messages: list[tuple[float, str]] = []
        close: int | None = None
        pos, chunk = 0, 0
        while pos + 2 <= len(buf):
            opcode, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                (length,), head = struct.unpack_from("!H", buf, pos + 2), 4
            elif length == 127:
                (length,), head = struct.unpack_from("!Q", buf, pos + 2), 10
            end = pos + head + length
            if end > len(buf):
                break
            payload = buf[pos + head : end]
            while ends[chunk][0] < end:
                chunk += 1
            if opcode == 0x1:
                messages.append((ends[chunk][1], payload.decode()))
            elif opcode == 0x8 and length >= 2:
                close = struct.unpack_from("!H", payload)[0]
            pos = end
        return messages, close

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


BURST_PUBLISHER = textwrap.dedent(
    """
    import json, random, sys, time
    from markupsafe import Markup
    from turbocast import Publisher, TurboStream

    spec = json.loads(sys.argv[1])
    publisher = Publisher(spec["url"], prefix=spec["prefix"])
    send = {
        "session": publisher.to_session,
        "all": lambda _key, stream: publisher.to_all(stream),
    }
    rng = random.Random(spec["worker"])
    targets = [tuple(t) for t in spec["targets"]]  # (kind, key, padding bytes)
    weights = spec["weights"]
    rate, count, worker, burst = spec["rate"], spec["count"], spec["worker"], spec["burst"]
    choices = rng.choices(range(len(targets)), weights=weights, k=count)
    sent = []
    # Back to back, as fast as this process can (a task fanning out a burst); bounded
    # in count and in time. Four processes on two cores stay under ``rate`` here.
    start, wall = time.monotonic(), time.time()
    for n in range(count):
        if time.monotonic() - start > 4 * count / rate:
            break  # far slower than the rate: give up (the test reports the rate)
        kind, key, pad = targets[choices[n]]
        html = Markup('<p data-m="{}-{}-{}" data-to="{}:{}" data-t="{:.6f}">{}</p>').format(
            burst, worker, n, kind, key, time.time(), "x" * pad
        )
        send[kind](key, TurboStream.append("log", html))
        sent.append([burst, worker, n, kind, key])
    print(json.dumps({"sent": sent, "start": wall, "end": time.time()}))
    """
)
_BURST_TAG = re.compile(r'data-m="(\w+)-(\d+)-(\d+)" data-to="(\w+):([^"]*)" data-t="([\d.]+)"')


@dataclass
class Burst:
    #: (burst, worker, number, kind, key) of every message sent.
    sent: list[tuple[str, int, int, str, str]]
    rate: float
    seconds: float


def _burst(
    redis_url: str,
    prefix: str,
    targets: list[tuple[str, str, int]],
    weights: list[float],
    rate: float,
    seconds: float,
    processes: int = 4,
) -> Burst:
    """Publish ``rate * seconds`` messages from several processes, each as fast as it can."""
    count = int(rate * seconds / processes)
    spec = {
        "url": redis_url,
        "prefix": prefix,
        "targets": targets,
        "weights": weights,
        "burst": secrets.token_hex(3),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                BURST_PUBLISHER,
                json.dumps({**spec, "worker": w, "rate": rate / processes, "count": count}),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(processes)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results.append(json.loads(out))
    sent: list[tuple[str, int, int, str, str]] = [tuple(m) for r in results for m in r["sent"]]
    # From the first message sent to the last: a process that started late (its imports
    # took longer than the lead) does not count its lateness as publishing time.
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return Burst(sent, len(sent) / span, span)


def _delivery(
    readers: FastReaders, sids: list[str], burst: Burst
) -> tuple[dict[str, int], list[float], list[int | None]]:
    """Per reader: what it got of the burst vs what was addressed to it.

    :returns: counts of problems, every message's latency, and each reader's close code.
    """
    problems: Counter[str] = Counter()
    latencies: list[float] = []
    closes: list[int | None] = []
    for i, sid in enumerate(sids):
        messages, close = readers.frames(i)
        closes.append(close)
        want = {m for m in burst.sent if m[3] == "all" or (m[3] == "session" and m[4] == sid)}
        got = []
        for received_at, text in messages:
            for b, w, n, kind, key, sent_at in _BURST_TAG.findall(text):
                got.append((b, int(w), int(n), kind, key))
                latencies.append(received_at - float(sent_at))
        problems["missing"] += len(want - set(got))
        problems["misdelivered"] += len(set(got) - want)
        problems["duplicated"] += len(got) - len(set(got))
    return dict(problems), latencies, closes


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


RATE = 4000.0
# Four publisher processes share two cores with the server and the readers here: they
# reach 2,400-4,000 msg/s. Below this floor the run did not test a burst at all.
MIN_RATE = 2000.0
NO_PROBLEMS = {"missing": 0, "misdelivered": 0, "duplicated": 0}


def _rendered(web: WebServer, cookies: list[str]) -> list[tuple[str, str]]:
    """Each session's page, rendered now: its socket URL (with today's positions) and cookie."""
    return [(page_stream_url(web.base_url, "/", c), c) for c in cookies]


def _run_burst(
    redis_url: str,
    prefix: str,
    readers: FastReaders,
    sids: list[str],
    targets: list[tuple[str, str, int]],
    weights: list[float],
) -> tuple[Burst, dict[str, int], list[float], list[int | None]]:
    """A burst at RATE for 2 s, then everything the readers of ``sids`` got of it."""
    burst = _burst(redis_url, prefix, targets, weights, RATE, 2.0)
    assert burst.rate >= MIN_RATE, (
        f"the publishers reached only {burst.rate:.0f} msg/s: this run did not saturate"
    )
    addressed = set(sids)
    want = sum(len(sids) if m[3] == "all" else 1 if m[4] in addressed else 0 for m in burst.sent)
    with contextlib.suppress(AssertionError):  # what is missing is reported below
        wait_for(
            lambda: (
                sum(readers.tagged(i) for i in range(len(sids))) >= want
                or any(readers.eof[: len(sids)])
            ),
            timeout=30,
            interval=0.5,
            what="the burst to be delivered",
        )
    problems, latencies, closes = _delivery(readers, sids, burst)
    return burst, problems, latencies, closes


@pytest.mark.timeout(150)
def test_fast_clients_keep_up_with_a_burst_and_a_stalled_one_delays_nobody(
    redis_url, log_dir, worker_class
):
    prefix = _prefix()
    env = {"TURBO_CHANNEL_PREFIX": prefix, "TURBO_PING_INTERVAL": "60"}
    with _server(redis_url, log_dir, worker_class, env) as web:
        cookies = [open_session(web.base_url) for _ in range(72)]
        sids = [session_id_of(c) for c in cookies]

        # (a) 70 fast readers; 4,000 messages a second for 2 s, nearly all to everyone
        # (each socket gets ~3,800 a second), the rest to single sessions.
        readers = FastReaders(_rendered(web, cookies[:70]))
        try:
            targets = [("session", sid, 0) for sid in sids[:70]] + [("all", "", 0)]
            weights = [0.05 / 70] * 70 + [0.95]
            burst, problems, _, closes = _run_burst(
                redis_url, prefix, readers, sids[:70], targets, weights
            )
            overflowed = closes.count(CLOSE_OUTBOX_OVERFLOW)
            assert (overflowed, problems) == (0, NO_PROBLEMS), (
                f"{overflowed} of 70 fast clients closed with 4001 at {burst.rate:.0f} msg/s; "
                f"close codes {Counter(closes)}"
            )
        finally:
            readers.close()

        # (b) 20 fast readers; a tenth of the messages (16 KiB each) go to one more
        # session. In the baseline a fast reader holds it; then one that stops reading.
        fast_sids = sids[:20]

        def load(other: str) -> tuple[list[tuple[str, str, int]], list[float]]:
            targets = [("session", sid, 0) for sid in fast_sids]
            targets += [("all", "", 0), ("session", other, 16 * 1024)]
            return targets, [0.65 / 20] * 20 + [0.25, 0.10]

        readers = FastReaders(_rendered(web, [*cookies[:20], cookies[70]]))
        try:
            burst, problems, latencies, closes = _run_burst(
                redis_url, prefix, readers, fast_sids, *load(sids[70])
            )
            assert (problems, set(closes)) == (NO_PROBLEMS, {None}), closes
            baseline = _p99(latencies)
        finally:
            readers.close()

        stalled = RawClient(web.ws_url, cookies[71], rcvbuf=4096)
        readers = FastReaders(_rendered(web, cookies[:20]))
        try:
            burst, problems, latencies, closes = _run_burst(
                redis_url, prefix, readers, fast_sids, *load(sids[71])
            )
            assert (problems, set(closes)) == (NO_PROBLEMS, {None}), closes
            with_stalled = _p99(latencies)
            # The stalled client's writer waits on its own socket only; the others pay
            # at most the relay's work for one more outbox and its overflow. Allow twice
            # the baseline's p99 plus 50 ms: a shared, busy machine varies that much.
            assert with_stalled <= 2 * baseline + 0.050, (
                f"p99 {with_stalled * 1000:.0f} ms with the stalled client, "
                f"{baseline * 1000:.0f} ms without"
            )
            _, close = stalled.read_until_closed(timeout=30)
            assert close is not None and close.code == CLOSE_OUTBOX_OVERFLOW, close
        finally:
            readers.close()
            stalled.close()
