"""Presence on a named stream, against a real Redis and two real web processes.

First :class:`turbocast.Presence` itself (the scripts that keep connections and members
in step). Then the demo's board page, whose stream source asks for its presence, served
by two gunicorn servers (one worker each: two web processes for sure): a user with three
tabs over both is one member; closing two keeps them; closing the third makes them leave
after the grace period; a reload is neither a leave nor a join; a web process killed with
SIGKILL takes its users with it within the documented time, and the other's stay.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from simple_websocket import ConnectionClosed

from tests.support import (
    Client,
    WebServer,
    login,
    open_session,
    page_stream_url,
    wait_for,
)
from turbocast import Presence, Publisher, TurboStream
from turbocast.presence import REAP_SECONDS, member_dom_id, presence_keys

STREAM = "board:1"
GRACE = 1.0
TTL = 3.0


# -- the Redis side --------------------------------------------------------------------------


@pytest.fixture
def presence(redis_client: redis.Redis) -> Iterator[Presence]:
    prefix = f"p{os.urandom(4).hex()}"
    yield Presence(redis_client, prefix=prefix, ttl=0.6, grace=0.2)


def test_a_user_is_one_member_however_many_sockets_and_leaves_with_the_last(presence):
    assert presence.join(STREAM, "alice", "c1") == (True, [])
    assert presence.join(STREAM, "alice", "c2") == (False, [])
    assert presence.join(STREAM, "bob", "c3") == (True, [])
    assert (presence.members(STREAM), presence.count(STREAM)) == (["alice", "bob"], 2)

    presence.linger(STREAM, "alice", "c1")
    wait_for(lambda: presence.connections(STREAM) == 2, what="c1's grace to end")
    assert presence.reap([STREAM]) == {}  # c1 went, but alice has c2
    assert presence.members(STREAM) == ["alice", "bob"]

    presence.linger(STREAM, "alice", "c2")
    assert presence.members(STREAM) == ["alice", "bob"]  # within the grace period
    left = wait_for(lambda: presence.reap([STREAM]), what="alice's leave")
    assert left == {STREAM: ["alice"]}
    assert presence.members(STREAM) == ["bob"]
    assert presence.reap([STREAM]) == {}  # a leave is reaped once


def test_a_socket_back_within_the_grace_period_is_neither_a_leave_nor_a_join(presence):
    presence.join(STREAM, "alice", "c1")
    presence.linger(STREAM, "alice", "c1")  # a reload: the old socket closes...
    assert presence.join(STREAM, "alice", "c2") == (False, [])  # ...and its successor comes
    wait_for(lambda: presence.connections(STREAM) == 1, what="c1's grace to end")
    assert presence.reap([STREAM]) == {}
    assert presence.members(STREAM) == ["alice"]


def test_unrenewed_entries_stop_counting_at_once_and_are_reaped_by_the_next_join(presence):
    presence.join(STREAM, "alice", "c1")  # its process dies: nobody renews it
    presence.join(STREAM, "bob", "c2")

    def alice_expired() -> bool:
        presence.renew({STREAM: [("bob", "c2")]})  # bob's process lives on
        return presence.members(STREAM) == ["bob"]

    wait_for(alice_expired, timeout=5, what="alice's expiry")
    # Not reaped yet, yet alice counts no more; her next socket is a join, and the join
    # reaps (and reports) what expired.
    assert presence.join(STREAM, "alice", "c3") == (True, ["alice"])


def test_a_renewal_of_a_reaped_entry_makes_the_user_a_member_again(presence):
    presence.join(STREAM, "alice", "c1")
    wait_for(lambda: presence.reap([STREAM]) == {STREAM: ["alice"]}, timeout=5)
    assert presence.renew({STREAM: [("alice", "c1")]}) == {STREAM: ["alice"]}
    assert presence.members(STREAM) == ["alice"]


def test_only_redis_clock_counts_so_hosts_may_disagree(presence, monkeypatch):
    presence.join(STREAM, "alice", "c1")  # a host whose clock is right
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # a host an hour ahead
    assert presence.join(STREAM, "bob", "c2") == (True, [])  # alice is not reaped as expired
    assert presence.members(STREAM) == ["alice", "bob"]
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # and one an hour behind
    presence.linger(STREAM, "alice", "c1")  # her grace is a second at most, by Redis's clock
    left = wait_for(lambda: presence.reap([STREAM]), timeout=5, what="alice's leave")
    assert left == {STREAM: ["alice"]}


def test_nothing_outlives_its_members(presence, redis_client):
    presence.join(STREAM, "alice", "c1")
    sockets, users = presence_keys(STREAM, presence.prefix)
    for key in (sockets, users):
        assert 0 < redis_client.pttl(key) <= presence.keys_ttl_ms
    presence.linger(STREAM, "alice", "c1")
    wait_for(lambda: presence.reap([STREAM]), what="alice's leave")
    # Every entry reaped: the sorted set and the hash are empty, so Redis removed them.
    assert redis_client.exists(sockets, users) == 0


# -- two web processes -------------------------------------------------------------------------


class Tab:
    """A board page's socket (the demo's board asks for its presence), read in a thread."""

    def __init__(self, server: WebServer, cookie: str) -> None:
        url = page_stream_url(server.base_url, f"/boards/{STREAM.split(':')[1]}", cookie)
        assert "presence=" in url
        self.ws = Client.connect(url, headers={"Cookie": cookie})
        self.messages: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            while (message := self.ws.receive()) is not None:
                self.messages.append(str(message))

    def changes(self, user: str) -> list[str]:
        """The joins (``+``) and leaves (``-``) of ``user`` this tab received, in order."""
        dom = member_dom_id(STREAM, user)
        found = []
        for message in self.messages:
            if re.search(rf'action="append"[^>]*>.*id="{dom}"', message, re.S):
                found.append("+")
            elif f'action="remove" target="{dom}"' in message:
                found.append("-")
        return found

    def close(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            self.ws.close()


@pytest.fixture(params=["gthread", "gevent"])
def servers(
    request: pytest.FixtureRequest, redis_url: str, redis_client: redis.Redis, log_dir: Path
) -> Iterator[list[WebServer]]:
    # The board's presence from scratch: no member left over from another test.
    redis_client.delete(*presence_keys(STREAM))
    env = {"TURBO_PRESENCE_GRACE": str(GRACE), "TURBO_PRESENCE_TTL": str(TTL)}
    started: list[WebServer] = []
    try:
        for _ in range(2):
            server = WebServer(redis_url, env=env, threads=32, worker_class=request.param)
            started.append(server.start(log_dir))
        yield started
    finally:
        for server in started:
            server.stop()


def signed_in(server: WebServer, name: str) -> str:
    return login(server.base_url, open_session(server.base_url), name)


def settle(publisher: Publisher, watcher: Tab) -> None:
    """Until the watcher has everything published to the board so far (a marker after it)."""
    marker = f"marker-{os.urandom(4).hex()}"
    publisher.to_stream(STREAM, TurboStream.remove(marker))
    wait_for(lambda: any(marker in m for m in watcher.messages), what="the marker")


def test_tabs_over_two_processes_are_one_member_and_a_reload_is_not_a_leave(
    servers, redis_url, redis_client
):
    a, b = servers
    presence = Presence(redis_client, ttl=TTL, grace=GRACE)
    publisher = Publisher(redis_url)
    tabs: list[Tab] = []
    try:
        bob = Tab(a, signed_in(a, "bob"))
        tabs.append(bob)
        wait_for(lambda: bob.changes("bob") == ["+"], what="bob's own join")

        # Alice: three tabs, two in one process, one in the other, opened together.
        alice_cookie = signed_in(a, "alice")
        opened = [None, None, None]

        def open_tab(i: int) -> None:
            opened[i] = Tab([a, a, b][i], alice_cookie)

        threads = [threading.Thread(target=open_tab, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        alice = [tab for tab in opened if tab is not None]
        assert len(alice) == 3
        tabs += alice
        assert presence.members(STREAM) == ["alice", "bob"]
        assert presence.connections(STREAM) == 4
        settle(publisher, bob)
        assert bob.changes("alice") == ["+"], "three tabs must make one join"

        # Two tabs close (one in each process): alice stays, once their grace is over too.
        alice[0].close()
        alice[2].close()
        wait_for(lambda: presence.connections(STREAM) == 2, what="the two tabs' grace to end")
        wait_for(lambda: not presence.reap([STREAM]) and True, what="a reap")
        settle(publisher, bob)
        assert bob.changes("alice") == ["+"]
        assert presence.members(STREAM) == ["alice", "bob"]

        # The third closes: alice leaves, after the grace period and not before.
        closed = time.monotonic()
        alice[1].close()
        wait_for(lambda: bob.changes("alice") == ["+", "-"], what="alice's leave")
        took = time.monotonic() - closed
        assert GRACE <= took <= GRACE + REAP_SECONDS + 1.5, took
        assert presence.members(STREAM) == ["bob"]

        # A reload: the page's socket closes and the reloaded page's opens, in the other
        # process. Neither a leave nor a join, also once the old socket's grace is over.
        first = Tab(b, alice_cookie)
        tabs.append(first)
        wait_for(lambda: bob.changes("alice") == ["+", "-", "+"], what="alice's join")
        first.close()
        reloaded = Tab(a, alice_cookie)
        tabs.append(reloaded)
        wait_for(lambda: presence.connections(STREAM) == 2, what="the old socket's grace to end")
        wait_for(lambda: not presence.reap([STREAM]) and True, what="a reap")
        settle(publisher, bob)
        assert bob.changes("alice") == ["+", "-", "+"]
        assert presence.members(STREAM) == ["alice", "bob"]
    finally:
        for tab in tabs:
            tab.close()
        publisher.close()


def test_a_process_killed_takes_its_users_with_it_within_the_ttl(servers, redis_url, redis_client):
    a, b = servers
    presence = Presence(redis_client, ttl=TTL, grace=GRACE)
    publisher = Publisher(redis_url)
    tabs: list[Tab] = []
    try:
        bob = Tab(a, signed_in(a, "bob"))
        alice = Tab(a, signed_in(a, "alice"))
        carol = Tab(b, signed_in(b, "carol"))
        tabs += [bob, alice, carol]
        wait_for(lambda: presence.members(STREAM) == ["alice", "bob", "carol"])
        settle(publisher, bob)

        worker = _worker_pid(b)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        # README, Presence: within TURBO_PRESENCE_TTL + REAP_SECONDS of the kill (+1 s for a
        # busy machine), reaped by the process that is left.
        bound = TTL + REAP_SECONDS + 1.0
        wait_for(lambda: bob.changes("carol") == ["+", "-"], timeout=bound + 5, what="carol")
        took = time.monotonic() - killed
        assert took <= bound, took
        assert presence.members(STREAM) == ["alice", "bob"]
        settle(publisher, bob)
        assert bob.changes("alice") == ["+"], "the other process's users stay"
    finally:
        for tab in tabs:
            tab.close()
        publisher.close()


def _worker_pid(server: WebServer) -> int:
    match = re.search(r"Booting worker with pid: (\d+)", server.log())
    assert match, server.log()[-2000:]
    return int(match.group(1))
