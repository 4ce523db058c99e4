"""Several hosts: one Redis host and three web hosts, each a network namespace on a bridge.

Every web host runs the real web command (gunicorn, two workers) bound to its own
address, with ``REDIS_URL`` on the Redis host; the test run, in the root namespace,
is the browsers and the worker that publishes. Messages go from a publisher through
Redis to the sockets of every host, a client resumes on another host than the one
it left, and a host killed outright loses none of its clients' messages.

Each test runs twice: with turbocast on the Redis host's single server ("single"),
and on a Redis Cluster of six nodes on that same host ("cluster"), which every web
host's ``TURBO_REDIS_URL`` and the publisher name; Celery stays on the single server.
A cluster keeps each channel's messages in order, but not one order across channels
(there is no clock key: each shard's ids are its own), so there the tests check the
order per channel, and wait for every message they expect instead of for the last.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import simple_websocket
from markupsafe import Markup

from app.embedded_redis import find_redis_server
from tests.netns import NamespacedCluster, NamespacedRedis, Network, NetworkUnavailable
from tests.support import (
    ResumingClient,
    WebServer,
    login,
    open_session,
    page_stream_url,
    session_id_of,
    wait_for,
)
from turbocast import Publisher, TurboStream

_MARK = re.compile(r'data-mark="([^"]+)"')


def _stream(mark: str | int) -> TurboStream:
    return TurboStream.append("log", Markup('<p data-mark="{}"></p>').format(mark))


@dataclass
class Hosts:
    network: Network
    redis: NamespacedRedis


@pytest.fixture(scope="module")
def hosts(log_dir: Path) -> Iterator[Hosts]:
    """The network, and the Redis host's single server (Celery's broker in both modes)."""
    network = Network(["redis", "web1", "web2", "web3"])
    redis: NamespacedRedis | None = None
    try:
        try:
            network.up()
        except NetworkUnavailable as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        redis_host = network.hosts["redis"]
        redis = NamespacedRedis(redis_host, find_redis_server()).start(log_dir)
        if not network.hosts["web1"].reaches(redis_host.address, redis.port):
            pytest.skip("this machine filters traffic between namespaces on a bridge")
        yield Hosts(network, redis)
    finally:
        if redis is not None:
            redis.stop()
        network.down()


@pytest.fixture(scope="module")
def redis_cluster(hosts: Hosts) -> Iterator[NamespacedCluster]:
    """A Redis Cluster on the Redis host, beside its single server: once per module."""
    with NamespacedCluster(hosts.network.hosts["redis"]) as cluster:
        yield cluster


@dataclass
class Site:
    """The three web hosts, and the Redis URL their turbocast (and the publisher) use."""

    network: Network
    #: ``"single"`` or ``"cluster"``.
    kind: str
    turbo_redis_url: str
    webs: list[WebServer] = field(default_factory=list)

    @property
    def one_order(self) -> bool:
        """Whether messages arrive in publish order across channels, not only within one."""
        return self.kind == "single"


@pytest.fixture(scope="module", params=["single", "cluster"])
def site(request: pytest.FixtureRequest, hosts: Hosts, log_dir: Path) -> Iterator[Site]:
    """gunicorn on each web host, with turbocast on the single Redis or on the cluster."""
    if request.param == "cluster":
        turbo_redis_url = request.getfixturevalue("redis_cluster").url
    else:
        turbo_redis_url = hosts.redis.url
    webs: list[WebServer] = []
    try:
        for name in ("web1", "web2", "web3"):
            host = hosts.network.hosts[name]
            webs.append(
                WebServer(
                    hosts.redis.url,
                    env={"TURBO_REDIS_URL": turbo_redis_url},
                    workers=2,
                    host=host.address,
                    command_prefix=host.command_prefix,
                )
            )
        with ThreadPoolExecutor(len(webs)) as pool:  # three gunicorns boot side by side
            list(pool.map(lambda web: web.start(log_dir), webs))
        yield Site(hosts.network, request.param, turbo_redis_url, webs)
    finally:
        for web in webs:
            web.stop()


@pytest.fixture
def webs(site: Site, log_dir: Path) -> list[WebServer]:
    """The three web hosts, each serving: one a test killed is started again."""
    for web in site.webs:
        if web.process is None or web.process.poll() is not None:
            web.start(log_dir)
    return site.webs


@pytest.fixture
def publisher(site: Site) -> Iterator[Publisher]:
    """A worker's publisher, in the root namespace, on the web hosts' turbocast Redis."""
    pub = Publisher(site.turbo_redis_url)
    yield pub
    pub.close()


def _on(web: WebServer, client: ResumingClient) -> None:
    """Point ``client`` at ``web``: its next connect goes there, with its positions."""
    client.base = urlsplit(client.base)._replace(netloc=urlsplit(web.base_url).netloc).geturl()


def _marks(client: ResumingClient, label: str | None = None) -> list[str]:
    """The marks of the test's messages ``client`` got, in order (of one label if given)."""
    return [
        mark
        for kind, lbl, _, html in client.received
        if kind == "m" and (label is None or lbl == label)
        for mark in _MARK.findall(html)
    ]


def _read_until(client: ResumingClient, *marks: str) -> None:
    """Read until messages carry every one of ``marks``; each read fails after 10 s without one."""
    while not set(marks) <= set(_marks(client)):
        client.next()


# 1 ---------------------------------------------------------------------------------------


@dataclass
class Page:
    """One open page: whose session, which user and board, on which host."""

    session: str
    host: int
    user: str | None = None
    board: int | None = None
    client: ResumingClient | None = field(default=None, repr=False)


def test_each_publish_reaches_exactly_its_addressees_on_every_host(webs, publisher, site):
    pages = [
        Page("a", 0), Page("a", 1, board=7), Page("a", 2),
        Page("b", 0, board=8), Page("b", 2),
        Page("alice-phone", 0, user="alice"), Page("alice-phone", 1, user="alice"),
        Page("alice-laptop", 2, user="alice", board=7),
        Page("c", 1, board=8),
        Page("d", 0),
    ]  # fmt: skip
    cookies: dict[str, str] = {}
    for page in pages:  # a session's first page sets its cookie, on whichever host served it
        web = webs[page.host]
        if page.session not in cookies:
            cookie = open_session(web.base_url)
            cookies[page.session] = login(web.base_url, cookie, page.user) if page.user else cookie
        path = f"/boards/{page.board}" if page.board else "/"
        url = page_stream_url(web.base_url, path, cookies[page.session])
        assert urlsplit(url).hostname == web.host
        page.client = ResumingClient(url, cookies[page.session]).connect()
    try:
        # Published right away: a socket not yet subscribed gets it from the history,
        # after the positions its page rendered with.
        publisher.to_session(session_id_of(cookies["a"]), _stream("to-a"))
        publisher.to_session(session_id_of(cookies["b"]), _stream("to-b"))
        publisher.to_user("alice", _stream("to-alice"))
        publisher.to_stream("board:7", _stream("to-board-7"))
        publisher.to_stream("board:8", _stream("to-board-8"))
        publisher.to_all(_stream("to-all"))  # last: with one order, once a page has it, it has all

        for page in pages:
            expected = [
                mark
                for mark, addressed in [
                    ("to-a", page.session == "a"),
                    ("to-b", page.session == "b"),
                    ("to-alice", page.user == "alice"),
                    ("to-board-7", page.board == 7),
                    ("to-board-8", page.board == 8),
                    ("to-all", True),
                ]
                if addressed
            ]
            assert page.client is not None
            _read_until(page.client, *expected)
            if site.one_order:
                assert _marks(page.client) == expected, page
            else:  # each mark is a channel of its own
                assert sorted(_marks(page.client)) == sorted(expected), page
    finally:
        for page in pages:
            if page.client is not None:
                page.client.close()


# 2 ---------------------------------------------------------------------------------------


def test_a_client_that_left_one_host_resumes_on_another_with_what_it_missed(webs, publisher, site):
    first, second = webs[0], webs[1]
    cookie = open_session(first.base_url)
    sid = session_id_of(cookie)
    client = ResumingClient(page_stream_url(first.base_url, "/", cookie), cookie).connect()
    try:
        for n in (1, 2, 3):
            publisher.to_session(sid, _stream(n))
            client.next()
        client.close()
        for n in (4, 5, 6):  # while it is away
            publisher.to_session(sid, _stream(n))
        publisher.to_all(_stream("everyone"))

        _on(second, client)
        client.connect()
        assert urlsplit(client.base).hostname == second.host
        publisher.to_session(sid, _stream(7))  # the second host's, whether live or replayed
        publisher.to_all(_stream("end"))
        _read_until(client, "7", "end")

        assert _marks(client, "s") == ["1", "2", "3", "4", "5", "6", "7"]
        assert _marks(client, "b") == ["everyone", "end"]
        if site.one_order:
            assert _marks(client) == ["1", "2", "3", "4", "5", "6", "everyone", "7", "end"]
    finally:
        client.close()


# 3 ---------------------------------------------------------------------------------------

COUNT = 300


class Roamer:
    """A page's tagged client reading on its own thread; when its host goes, it tries the
    others in its order (as a load balancer would send it on) and resumes there."""

    def __init__(self, url: str, cookie: str, hosts: list[WebServer], one_order: bool) -> None:
        self.client = ResumingClient(url, cookie)
        self.hosts = hosts  # its own host first
        self.one_order = one_order
        self.at = 0
        self.closed = 0  # how often its socket was closed under it
        self.error: BaseException | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def numbers(self) -> list[int]:
        return [int(mark) for mark in _marks(self.client, "s")]

    def finished(self) -> bool:
        """Whether it has all it will ever get: "done", published after every number, came;
        without one order across channels, the last number too."""
        return "done" in _marks(self.client, "b") and (self.one_order or COUNT in self.numbers())

    def _run(self) -> None:
        try:
            self.client.connect()
            while not self.finished():
                try:
                    self.client.next(timeout=20)
                except simple_websocket.ConnectionClosed:
                    if self.stopping:
                        return
                    self.closed += 1
                    self.client.ws = None
                    wait_for(self._move_on, timeout=20, what="another host to take the client")
        except BaseException as exc:  # noqa: BLE001 - the test thread reports it
            self.error = exc

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(simple_websocket.ConnectionClosed):  # closed under it already
            self.client.close()
        if self.thread.ident is not None:
            self.thread.join(timeout=10)

    def _move_on(self) -> bool:
        self.at = (self.at + 1) % len(self.hosts)
        _on(self.hosts[self.at], self.client)
        try:
            self.client.connect()
        except (OSError, simple_websocket.ConnectionError):
            return False
        return True


def test_killing_a_host_loses_no_message_of_its_clients(webs, publisher, site):
    one, two, three = webs
    # Six sessions, two pages each, on two hosts: four of the twelve sockets on host 2.
    placements = [(one, two), (two, three), (three, one)] * 2
    roamers: list[Roamer] = []
    sids: list[str] = []
    for index, pair in enumerate(placements):
        cookie = open_session(pair[0].base_url)
        sids.append(session_id_of(cookie))
        for web in pair:
            # The others in one order or the other: host 2's clients go to both 1 and 3.
            others = [w for w in (one, three, two) if w is not web]
            order = [web, *(others if index % 2 else others[::-1])]
            url = page_stream_url(web.base_url, "/", cookie)
            roamers.append(Roamer(url, cookie, order, site.one_order))
    on_two = [r for r in roamers if r.hosts[0] is two]

    killed = threading.Event()
    published: list[int] = []
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            for n in range(1, COUNT + 1):
                for sid in sids:
                    publisher.to_session(sid, _stream(n))
                published.append(n)
                if n == COUNT // 2:
                    # However slow the machine, half the sequence comes after the kill.
                    killed.wait(timeout=30)
                killed.wait(timeout=0.01)  # a steady pace, not a handshake with anyone
            publisher.to_all(_stream("done"))  # the end, for Roamer.finished
        except BaseException as exc:  # noqa: BLE001 - the test thread reports it
            failures.append(exc)

    publishing = threading.Thread(target=publish, daemon=True)
    try:
        for roamer in roamers:  # every page connects at once, the publisher already going
            roamer.thread.start()
        publishing.start()

        wait_for(
            lambda: all(len(r.numbers()) >= 20 or r.error for r in on_two),
            timeout=20,
            what="host 2's clients to be receiving",
        )
        at_kill = len(published)
        pids = site.network.hosts["web2"].kill_all()
        killed.set()
        assert two.process is not None and two.process.pid in pids  # the master, and its workers
        assert len(pids) == 3
        two.process.wait()

        publishing.join(timeout=30)
        assert not publishing.is_alive()
        assert not failures, failures
        for roamer in roamers:
            roamer.thread.join(timeout=30)
        for roamer in roamers:
            assert roamer.error is None, (roamer.hosts[0].host, roamer.error)
            assert not roamer.thread.is_alive()
        for roamer in roamers:
            assert roamer.numbers() == list(range(1, COUNT + 1)), (
                f"{roamer.hosts[0].host} -> {roamer.hosts[roamer.at].host}, kill at {at_kill}"
            )
        assert all(r.closed >= 1 and r.hosts[r.at] is not two for r in on_two)
        assert all(r.closed == 0 for r in roamers if r not in on_two)  # the others never noticed
        assert {r.hosts[r.at].host for r in on_two} == {one.host, three.host}
    finally:
        killed.set()  # a publisher still waiting for the kill goes on and ends
        for roamer in roamers:
            roamer.stop()
