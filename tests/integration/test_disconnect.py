"""Sign-out that signs out: disconnect_user / disconnect_session close sockets on every process.

A real gunicorn with two workers; real WebSocket clients, spread over both
processes (the log says which process opened each). The orders come from a
separate process, as a Celery worker would send them, through Publisher.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import simple_websocket

from tests.support import (
    WebServer,
    connect,
    handshake_status,
    login,
    numsub,
    open_session,
    receive,
    session_id_of,
    wait_for,
)
from turbocast import CLOSE_SIGNED_OUT, Publisher, TurboStream
from turbocast.channels import control_channel

_SIGNED_OUT = re.compile(r"\[(\d+)\][^\n]*socket signed out")


class Processes:
    """Two gunicorn servers on one Redis, one worker each: two web processes for sure.

    (gunicorn's two workers behind one port take connections as they like, so a test
    could not be sure that both ever held a socket.) Pages and handshakes go to the
    first unless a test says otherwise; ``log()`` is both servers' logs.
    """

    def __init__(self, servers: list[WebServer]) -> None:
        self.servers = servers
        self.base_url = servers[0].base_url
        self.ws_url = servers[0].ws_url

    def log(self) -> str:
        return "".join(server.log() for server in self.servers)


@pytest.fixture(scope="module")
def web(redis_url: str, log_dir: Path) -> Iterator[Processes]:
    servers = []
    try:
        for _ in range(2):
            server = WebServer(redis_url, env={"TURBO_MAX_SOCKETS_PER_SESSION": "40"}, threads=64)
            servers.append(server.start(log_dir))
        yield Processes(servers)
    finally:
        for server in servers:
            server.stop()


def _spread(web: Processes, cookies: list[str]) -> list[simple_websocket.Client]:
    """Two sockets of each cookie, one in each web process."""
    return [connect(server.ws_url, cookie) for cookie in cookies for server in web.servers]


def _closed_with(ws: simple_websocket.Client) -> int:
    """Read until the server closes; its close code."""
    try:
        while True:
            if ws.receive(timeout=10) is None:
                raise AssertionError("the socket stayed open")
    except simple_websocket.ConnectionClosed:
        with contextlib.suppress(simple_websocket.ConnectionClosed):
            ws.close()
        return int(ws.close_reason)


def _order_from_a_worker(redis_url: str, kind: str, ident: str) -> int:
    """Send the order from a separate process, as a Celery task would."""
    script = (
        "import sys; from turbocast import Publisher;"
        "p = Publisher.from_config({'REDIS_URL': sys.argv[1]});"
        f"print(p.disconnect_{kind}(sys.argv[2]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, redis_url, ident],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(out.stdout.strip())


def _still_open(publisher: Publisher, sockets: list[simple_websocket.Client], text: str) -> None:
    publisher.to_all(TurboStream.append("news", text))
    for ws in sockets:
        wait_for(lambda ws=ws: text in receive(ws), what=f"{text} on a socket left open")


def test_disconnect_user_closes_every_socket_of_the_user_on_every_process(
    web: Processes, redis_url: str, redis_client: redis.Redis, publisher: Publisher
) -> None:
    alice = [login(web.base_url, open_session(web.base_url), "alice") for _ in range(2)]
    bob = login(web.base_url, open_session(web.base_url), "bob")
    anonymous = open_session(web.base_url)
    alices = _spread(web, alice)
    others = [connect(web.ws_url, cookie) for cookie in (bob, anonymous, bob, anonymous)]
    wait_for(lambda: numsub(redis_client, control_channel()) == 2, what="both relays subscribed")
    signed_out_before = len(_SIGNED_OUT.findall(web.log()))

    assert _order_from_a_worker(redis_url, "user", "alice") == 2

    assert [_closed_with(ws) for ws in alices] == [CLOSE_SIGNED_OUT] * len(alices)
    lines = wait_for(
        lambda: (
            (found := _SIGNED_OUT.findall(web.log())[signed_out_before:])
            and len(found) == len(alices)
            and found
        ),
        what="one log line per socket signed out",
    )
    assert len(set(lines)) == 2, "both processes closed sockets of the user"
    _still_open(publisher, others, "after-alice-left")
    for ws in others:
        ws.close()


def test_disconnect_session_closes_that_session_only_on_every_process(
    web: Processes, redis_url: str, redis_client: redis.Redis, publisher: Publisher
) -> None:
    leaving = open_session(web.base_url)
    staying = open_session(web.base_url)
    carol = login(web.base_url, open_session(web.base_url), "carol")
    gone = _spread(web, [leaving])
    others = [connect(web.ws_url, cookie) for cookie in (staying, carol, staying, carol)]
    wait_for(lambda: numsub(redis_client, control_channel()) == 2, what="both relays subscribed")

    assert _order_from_a_worker(redis_url, "session", session_id_of(leaving)) == 2

    assert [_closed_with(ws) for ws in gone] == [CLOSE_SIGNED_OUT] * len(gone)
    _still_open(publisher, others, "after-the-session-left")
    for ws in others:
        ws.close()


def test_a_signed_out_session_is_refused_if_its_cookie_comes_back(
    web: Processes, redis_client: redis.Redis, publisher: Publisher
) -> None:
    # A handshake sent with the cookie from before the sign-out (in flight meanwhile).
    cookie = open_session(web.base_url)
    ws = connect(web.ws_url, cookie)
    wait_for(lambda: numsub(redis_client, control_channel()) == 2, what="both relays subscribed")
    assert publisher.disconnect_session(session_id_of(cookie)) == 2
    assert _closed_with(ws) == CLOSE_SIGNED_OUT
    # Every relay remembers the sign-out: each process refuses the handshake.
    assert [handshake_status(server.ws_url, cookie) for server in web.servers] == [403] * 2


def test_the_demo_logout_rotates_the_session_and_closes_the_old_one(
    web: Processes, publisher: Publisher
) -> None:
    cookie = login(web.base_url, open_session(web.base_url), "dave")
    ws = connect(web.ws_url, cookie)
    status_cookie = login(web.base_url, cookie, "erin")  # a change of user signs dave out
    assert session_id_of(status_cookie) != session_id_of(cookie)
    assert _closed_with(ws) == CLOSE_SIGNED_OUT
    fresh = connect(web.ws_url, status_cookie)
    _still_open(publisher, [fresh], "erin-is-here")
    fresh.close()
