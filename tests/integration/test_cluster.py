"""turbocast on a real Redis Cluster (3 primaries, 3 replicas): sharded pub/sub end to end.

The web processes are cold gunicorns whose ``TURBO_REDIS_URL`` names the cluster
(Celery's broker stays on the test session's own Redis). Pages connect all at once
while publishers send without waiting for anyone; the cluster moves a slot and fails
a primary over in the middle of a publish stream.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from markupsafe import Markup

from app.embedded_redis import free_port
from tests.redis_topologies import RedisClusterServer
from tests.support import (
    ResumingClient,
    WebServer,
    handshake_status,
    login,
    open_session,
    page_stream_url,
    session_id_of,
    wait_for,
)
from turbocast import Publisher, PublishError
from turbocast.channels import (
    broadcast_channel,
    channel_for,
    history_key,
    stream_channel,
    user_channel,
)
from turbocast.subscriber import MESSAGE, SHARD_OPTIONS, SUBSCRIBED, ClusterSubscriber
from turbocast.topology import parse

USERS = ["ann", "bob"]
BOARDS = [1, 2]
LABELS = {"session": "s", "user": "u", "all": "b"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer() as server:
        yield server


@contextlib.contextmanager
def _web(
    redis_url: str,
    cluster: RedisClusterServer,
    log_dir: Path,
    worker_class: str,
    prefix: str,
    workers: int = 2,
) -> Iterator[WebServer]:
    env = {"TURBO_REDIS_URL": cluster.url, "TURBO_CHANNEL_PREFIX": prefix}
    web = WebServer(redis_url, env=env, worker_class=worker_class, workers=workers)
    web.start(log_dir)
    try:
        yield web
    finally:
        web.stop()


class Page:
    """A rendered page and its tagged socket, opened from a thread of its own."""

    def __init__(self, web: WebServer, index: int) -> None:
        cookie = open_session(web.base_url)
        self.user = USERS[index % 2] if index % 3 else None
        if self.user:
            cookie = login(web.base_url, cookie, self.user)
        self.board = BOARDS[index % 2] if index % 2 else None
        path = f"/boards/{self.board}" if self.board else "/"
        self.sid = session_id_of(cookie)
        self.client = ResumingClient(page_stream_url(web.base_url, path, cookie), cookie)
        self.error: BaseException | None = None

    @property
    def labels(self) -> set[str]:
        found = {"s", "b"}
        if self.user:
            found.add("u")
        if self.board:
            found.add(f"t:board:{self.board}")
        return found

    def messages(self) -> list[tuple[str, str]]:
        """``(label, text)`` of every message this test sent, in arrival order (a board
        page's stream also carries the presence of who is on the board)."""
        return [
            (label, html)
            for kind, label, _, html in self.client.received
            if kind == "m" and _MARK in html
        ]

    def read(self, stop: threading.Event) -> None:
        try:
            self.client.connect()
            while not stop.is_set():
                with contextlib.suppress(AssertionError):  # (nothing within the timeout)
                    self.client.next(timeout=0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


_MARK = '<turbo-stream action="append" target="log"><template><p>'


def _text(label: str, n: int) -> str:
    return f"{_MARK}{label} {n}</p></template></turbo-stream>"


def _addresses(prefix: str, pages: list[Page]) -> list[tuple[str, str]]:
    """(label, channel) of every channel the pages listen to."""
    found = {("b", broadcast_channel(prefix))}
    for page in pages:
        found.add((f"s:{page.sid}", channel_for(page.sid, prefix)))
        if page.user:
            found.add((f"u:{page.user}", user_channel(page.user, prefix)))
        if page.board:
            found.add((f"t:board:{page.board}", stream_channel(f"board:{page.board}", prefix)))
    return sorted(found)


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
@pytest.mark.timeout(120)
def test_sessions_users_streams_and_everyone_get_theirs_through_sharded_pubsub(
    redis_url, cluster, log_dir, worker_class
):
    prefix = f"cl{secrets.token_hex(3)}"
    with _web(redis_url, cluster, log_dir, worker_class, prefix) as web:
        pages = [Page(web, i) for i in range(12)]
        addresses = _addresses(prefix, pages)
        # The channels land on every shard: this tests more than one.
        assert len({cluster.node_of(c).port for _, c in addresses}) >= 2, addresses
        stop = threading.Event()
        readers = [threading.Thread(target=p.read, args=(stop,), daemon=True) for p in pages]
        publisher = Publisher(cluster.url, prefix=prefix)
        try:
            for reader in readers:  # all at once, to a cold server
                reader.start()
            # Published while the sockets connect, waiting for none of them.
            for n in range(40):
                for tag, channel in addresses:
                    publisher.publish(channel, Markup(_text(tag, n)))
            want = {
                id(page): {
                    label: [_text(tag, n) for n in range(40)]
                    for label in page.labels
                    for tag in [_tag(page, label)]
                }
                for page in pages
            }
            wait_for(
                lambda: all(len(p.messages()) >= 40 * len(p.labels) or p.error for p in pages),
                timeout=60,
                what="every page to get every message addressed to it",
            )
            for page in pages:
                assert page.error is None, page.error
                got: dict[str, list[str]] = {}
                for label, html in page.messages():
                    got.setdefault(label, []).append(html)
                # Exactly its own, each once, in publish order per channel.
                assert got == want[id(page)], page.sid

            # Sharded pub/sub: the relays are on the channel's shard, with SSUBSCRIBE.
            channel = broadcast_channel(prefix)
            with cluster.node_of(channel).client() as shard:
                # (one per worker holding a socket: gunicorn may give both's to one)
                assert shard.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] >= 1
                assert shard.execute_command("PUBSUB", "NUMSUB", channel)[1] == 0
        finally:
            stop.set()
            publisher.close()
            for page in pages:
                page.client.close()


def _tag(page: Page, label: str) -> str:
    if label == "s":
        return f"s:{page.sid}"
    if label == "u":
        return f"u:{page.user}"
    return label


@pytest.mark.timeout(150)
def test_a_slot_migration_and_a_failover_mid_stream_lose_nothing_accepted(
    redis_url, cluster, log_dir
):
    prefix = f"cl{secrets.token_hex(3)}"
    with _web(redis_url, cluster, log_dir, "gthread", prefix, workers=1) as web:
        steady = [Page(web, 0), Page(web, 0)]  # (anonymous, home page: session and everyone)
        leaving = Page(web, 0)
        stop = threading.Event()
        readers = [threading.Thread(target=p.read, args=(stop,), daemon=True) for p in steady]
        for reader in readers:
            reader.start()
        leaving.client.connect()
        publisher = Publisher(cluster.url, prefix=prefix)
        accepted: list[tuple[str, int]] = []
        refused: list[tuple[str, int, str]] = []
        phase = {"n": 0}
        channels = {"b": broadcast_channel(prefix)}
        for page in [*steady, leaving]:
            channels[f"s:{page.sid}"] = channel_for(page.sid, prefix)

        def publish(count: int) -> None:
            for _ in range(count):
                n = phase["n"]
                phase["n"] += 1
                for tag, channel in channels.items():
                    try:
                        publisher.publish(channel, Markup(_text(tag, n)))
                    except PublishError as exc:
                        refused.append((tag, n, str(exc)))
                    else:
                        accepted.append((tag, n))

        try:
            publish(30)
            while len(leaving.messages()) < 60:  # (its session's 30 and everyone's 30)
                leaving.client.next(timeout=20)
            leaving.client.close()  # it goes away, and comes back later

            # The slot of one session's channel (and its history) moves to another shard...
            moved = channels[f"s:{steady[0].sid}"]
            thread = threading.Thread(target=publish, args=(60,), daemon=True)
            thread.start()
            source, target = cluster.migrate_slot(moved)
            # ...and the shard holding everyone's channel fails over to its replica.
            old, new = cluster.failover(channels["b"])
            thread.join(60)
            assert not thread.is_alive()
            publish(30)

            leaving.client.connect()  # it resumes from its positions
            stop_leaving = threading.Event()
            resume = threading.Thread(target=_drain, args=(leaving, stop_leaving), daemon=True)
            resume.start()

            def expected(page: Page) -> dict[str, list[str]]:
                mine = {"b": "b", f"s:{page.sid}": "s"}
                found: dict[str, list[str]] = {}
                for tag, n in accepted:
                    if tag in mine:
                        found.setdefault(mine[tag], []).append(_text(tag, n))
                return found

            everyone = [*steady, leaving]
            wait_for(
                lambda: all(
                    sum(len(v) for v in expected(p).values()) <= len(p.messages()) or p.error
                    for p in everyone
                ),
                timeout=60,
                what="every accepted message to arrive",
            )
            stop_leaving.set()
            resume.join(5)
            report = {
                "moved": (source.port, target.port),
                "failed over": (old.port, new.port),
                "accepted": len(accepted),
                "refused": len(refused),
            }
            for page in everyone:
                assert page.error is None, (page.error, report)
                got: dict[str, list[str]] = {}
                for label, html in page.messages():
                    got.setdefault(label, []).append(html)
                assert got == expected(page), report
            # Nothing was refused: the publisher follows MOVED and the failover itself.
            assert refused == [], report
            # The relays followed: resubscribed, on the shards that own the slots now.
            # (The failover may have taken the primary the slot moved to.)
            with cluster.node_of(moved).client() as shard:
                assert shard.execute_command("PUBSUB", "SHARDNUMSUB", moved)[1] == 1
            with cluster.node_of(channels["b"]).client() as shard:
                assert shard.execute_command("PUBSUB", "SHARDNUMSUB", channels["b"])[1] == 1
            counts = Counter(label for label, _ in leaving.messages())
            assert counts["b"] == 120, counts
        finally:
            stop.set()
            publisher.close()
            for page in [*steady, leaving]:
                page.client.close()


def _drain(page: Page, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            with contextlib.suppress(AssertionError):
                page.client.next(timeout=0.2)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        page.error = exc


def _read_until(subscriber: ClusterSubscriber, want: int) -> list[tuple[bytes, bytes, bytes]]:
    events: list[tuple[bytes, bytes, bytes]] = []
    wait_for(
        lambda: events.extend(subscriber.read()) or len(events) >= want,
        timeout=10,
        what=f"{want} events",
    )
    return events


def test_the_relays_subscriber_notices_when_the_cluster_moves_a_slot(cluster):
    prefix = f"cl{secrets.token_hex(3)}"
    moving, staying = stream_channel("moving", prefix), stream_channel("staying", prefix)
    client = parse(cluster.url).client(**SHARD_OPTIONS, socket_timeout=5)
    subscriber = ClusterSubscriber(client, poll_interval=0.05)
    publisher = Publisher(cluster.url, prefix=prefix)
    try:
        subscriber.subscribe(moving.encode(), staying.encode())
        confirmed = _read_until(subscriber, 2)
        assert {(kind, channel) for kind, channel, _ in confirmed} == {
            (SUBSCRIBED, moving.encode()),
            (SUBSCRIBED, staying.encode()),
        }
        publisher.publish(moving, Markup(_text("m", 1)))
        [(kind, channel, payload)] = _read_until(subscriber, 1)
        assert (kind, channel) == (MESSAGE, moving.encode()) and payload.endswith(
            _text("m", 1).encode()
        )
        # Its own SUNSUBSCRIBE is no alarm.
        subscriber.unsubscribe(staying.encode())
        publisher.publish(staying, Markup(_text("s", 1)))
        publisher.publish(moving, Markup(_text("m", 2)))
        # (its confirmation is swallowed, and what comes on the channel no more)
        assert [c for _, c, _ in _read_until(subscriber, 1)] == [moving.encode()]
        # The shard dropping a channel it was not asked to drop is: the slot moved.
        cluster.migrate_slot(moving)
        with pytest.raises(redis.ConnectionError, match="moved the slot"):
            wait_for(lambda: subscriber.read() and False, timeout=10, what="the move")
    finally:
        subscriber.close()
        publisher.close()
        client.close()


def test_a_batch_goes_to_every_shard_and_follows_a_moved_slot(cluster):
    prefix = f"cl{secrets.token_hex(3)}"
    names = [f"topic-{i}" for i in range(24)]
    publisher = Publisher(cluster.url, prefix=prefix)
    reader = Publisher(cluster.url, prefix=prefix)  # (its own client: a slot map of its own)
    try:
        assert len({cluster.node_of(stream_channel(n, prefix)).port for n in names}) == 3
        for round_ in (1, 2):
            with publisher.batch() as batch:
                for name in names:
                    batch.to_stream(name, Markup(_text(name, round_)))
            if round_ == 1:
                # The publisher's slot map is now out of date for this one: MOVED.
                cluster.migrate_slot(stream_channel(names[0], prefix))
        for name in names:
            key = history_key(stream_channel(name, prefix), prefix)
            entries, gap = reader.history.since(key, "0-0")
            assert [html.decode() for _, html, *_ in entries] == [
                _text(name, 1),
                _text(name, 2),
            ], name
            assert not gap
    finally:
        publisher.close()
        reader.close()


@pytest.mark.timeout(150)
def test_a_primary_killed_mid_stream_its_replica_takes_over_and_delivery_goes_on(
    redis_url, log_dir
):
    # A node going away at once (SIGKILL), not a handover: the cluster notices it after
    # its node timeout (1 s) and promotes the replica; the relay's shard connection breaks
    # and it connects again to the cluster as it is then.
    prefix = f"cl{secrets.token_hex(3)}"
    with (
        RedisClusterServer() as own,
        _web(redis_url, own, log_dir, "gthread", prefix, workers=1) as web,
    ):
        page = Page(web, 0)
        channel = channel_for(page.sid, prefix)
        stop = threading.Event()
        reading = threading.Thread(target=page.read, args=(stop,), daemon=True)
        reading.start()
        publisher = Publisher(own.url, prefix=prefix)
        accepted: list[int] = []
        refused: list[int] = []

        def publish_stream() -> None:  # never waits for a subscriber
            for n in range(300):
                try:
                    publisher.to_session(page.sid, Markup(_text("s", n)))
                except PublishError:
                    refused.append(n)
                else:
                    accepted.append(n)
                stop.wait(0.01)  # pacing, not synchronisation

        publishing = threading.Thread(target=publish_stream, daemon=True)
        try:
            publishing.start()
            wait_for(lambda: len(accepted) >= 60, timeout=30, what="the first messages")
            primary = own.node_of(channel)
            replica = own.replica_of(primary)
            primary.kill()
            wait_for(lambda: _owner(own, channel) is replica, timeout=30, what="the failover")
            publishing.join(60)
            assert not publishing.is_alive()
            after = list(range(300, 320))
            for n in after:  # the failover is over: every one is accepted
                publisher.to_session(page.sid, Markup(_text("s", n)))

            entries, _ = publisher.history.since(history_key(channel, prefix), "0-0")
            held = {int(html.decode().rsplit(" ", 1)[1].split("<")[0]) for _, html, *_ in entries}
            expected = [n for n in accepted if n in held] + after

            def delivered() -> list[int]:
                return [int(h.rsplit(" ", 1)[1].split("<")[0]) for _, h in page.messages()]

            wait_for(
                lambda: set(expected) <= set(delivered()) or page.error,
                timeout=60,
                what="every message the new primary holds",
            )
            got = delivered()
            lost = sorted(set(accepted) - set(got) - held)
            report = (
                f"cluster primary killed: accepted={len(accepted)} refused={len(refused)} "
                f"delivered={len(got)} held by the new primary={len(held)} lost={lost}"
            )
            print(report)
            assert page.error is None, (page.error, report)
            assert got == sorted(set(got)), f"twice or out of order: {report}"
            assert set(expected) <= set(got), report
            # The one window of loss: acknowledged by the dead primary, not yet replicated,
            # and not yet relayed live either. On one host it held nothing in every run.
            assert len(lost) <= 2, report
        finally:
            stop.set()
            publishing.join(30)
            publisher.close()
            page.client.close()


def _owner(cluster: RedisClusterServer, key: str) -> object:
    """The primary of ``key``'s slot, or ``None`` while no live primary has it."""
    try:
        return cluster.node_of(key)
    except (LookupError, redis.RedisError):
        return None


def test_a_socket_while_no_cluster_node_answers_is_refused_with_503(redis_url, log_dir):
    # A cluster's client connects when made (redis-py reads the slot map then): a relay
    # that cannot be made is Redis being away, as for one server, not a crash of the view.
    nowhere = f"redis+cluster://127.0.0.1:{free_port()}"
    env = {"TURBO_REDIS_URL": nowhere, "TURBO_REDIS_TIMEOUT": "1"}
    web = WebServer(redis_url, env=env).start(log_dir)
    try:
        cookie = open_session(web.base_url)  # (the page renders, without positions)
        assert handshake_status(web.ws_url, cookie) == 503
        assert "Redis unavailable: no relay" in web.log()
    finally:
        web.stop()
