"""Who may hear what: users, signed named streams, origins and limits, against real servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import simple_websocket
from markupsafe import Markup

from tests.support import (
    ROOT,
    WebServer,
    connect,
    handshake_status,
    login,
    numsub,
    open_session,
    page_stream_url,
    receive,
    session_id_of,
    wait_for,
)
from turbocast import (
    STATUS_BAD_ORIGIN,
    STATUS_BAD_STREAM,
    STATUS_TOO_MANY_SOCKETS,
    MessageTooLargeError,
    Publisher,
    TurboStream,
    channel_for,
    stream_channel,
    user_channel,
)

ENV = {
    "TURBO_MAX_INCOMING_BYTES": "1024",
    "TURBO_MAX_INCOMING_RATE": "20",
    "TURBO_MAX_SOCKETS_PER_SESSION": "3",
    "TURBO_ALLOWED_ORIGINS": '["https://app.example"]',
}


@pytest.fixture(scope="module")
def servers(redis_url: str, log_dir: Path) -> Iterator[tuple[WebServer, WebServer]]:
    """Two web processes (two gunicorns) on one Redis, as two hosts would be."""
    a = WebServer(redis_url, env=ENV).start(log_dir)
    b = WebServer(redis_url, env=ENV).start(log_dir)
    yield a, b
    b.stop()
    a.stop()


@pytest.fixture
def web(servers) -> WebServer:
    return servers[0]


def _stream(text: str) -> TurboStream:
    return TurboStream.append("log", Markup("<p>{}</p>").format(text))


def _still_serving(web: WebServer, redis_client, publisher: Publisher) -> None:
    """After a refusal, a good client still connects and receives."""
    cookie = open_session(web.base_url)
    sid = session_id_of(cookie)
    ws = connect(web.ws_url, cookie)
    try:
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        publisher.to_session(sid, _stream("still serving"))
        assert receive(ws) == str(_stream("still serving"))
    finally:
        ws.close()


def _board_url(web: WebServer, cookie: str, board: int) -> tuple[str, str]:
    """The board page's socket URL and the signed token in it."""
    url = page_stream_url(web.base_url, f"/boards/{board}", cookie)
    return url, parse_qs(urlsplit(url).query)["streams"][0]


def _with_token(url: str, token: str) -> str:
    return url.split("?", 1)[0] + "?" + urlencode({"streams": token})


# -- refusals ---------------------------------------------------------------------------


def test_tampered_stream_signature_is_refused(web, redis_client, publisher):
    cookie = open_session(web.base_url)
    url, token = _board_url(web, cookie, 1)
    payload, signature = token.rsplit(".", 1)
    forged = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    assert handshake_status(_with_token(url, forged), cookie) == STATUS_BAD_STREAM
    wait_for(lambda: "refused WebSocket handshake: invalid stream signature" in web.log())
    _still_serving(web, redis_client, publisher)


def test_a_signature_for_another_stream_name_is_refused(web, redis_client, publisher):
    cookie = open_session(web.base_url)
    url, token_1 = _board_url(web, cookie, 1)
    _, token_2 = _board_url(web, cookie, 2)
    # board:2's name with board:1's signature
    spliced = token_2.rsplit(".", 1)[0] + "." + token_1.rsplit(".", 1)[1]
    assert handshake_status(_with_token(url, spliced), cookie) == STATUS_BAD_STREAM
    # and a name the server never signed at all
    assert handshake_status(_with_token(url, "board:1"), cookie) == STATUS_BAD_STREAM
    _still_serving(web, redis_client, publisher)


def test_a_properly_signed_stream_is_accepted(web, redis_client, publisher):
    cookie = open_session(web.base_url)
    url, _ = _board_url(web, cookie, 3)
    ws = connect(url, cookie)
    try:
        wait_for(lambda: numsub(redis_client, stream_channel("board:3")) >= 1)
        publisher.to_stream("board:3", _stream("to board 3"))
        assert receive(ws) == str(_stream("to board 3"))
    finally:
        ws.close()


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://127.0.0.1.evil.example", "null"]
)
def test_a_handshake_from_another_origin_is_refused(web, redis_client, publisher, origin):
    cookie = open_session(web.base_url)
    assert handshake_status(web.ws_url, cookie, origin=origin) == STATUS_BAD_ORIGIN
    wait_for(lambda: "refused WebSocket handshake: origin not allowed" in web.log())
    _still_serving(web, redis_client, publisher)


@pytest.mark.parametrize("origin", ["same", "https://app.example", "HTTPS://APP.EXAMPLE:443"])
def test_same_origin_and_allowed_origins_are_accepted(web, origin):
    cookie = open_session(web.base_url)
    origin = web.base_url if origin == "same" else origin
    assert handshake_status(web.ws_url, cookie, origin=origin) == 101


def _closed_with(ws: simple_websocket.Client) -> int:
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        while True:
            ws.receive(timeout=10)
    return int(closed.value.reason)


def test_an_oversized_frame_closes_the_socket_with_1009(web, redis_client, publisher):
    ws = connect(web.ws_url, open_session(web.base_url))
    ws.send("x" * 2000)
    assert _closed_with(ws) == 1009
    wait_for(lambda: "closing socket: message too big" in web.log())
    _still_serving(web, redis_client, publisher)


def test_a_frame_flood_closes_the_socket_with_1008(web, redis_client, publisher):
    ws = connect(web.ws_url, open_session(web.base_url))
    for _ in range(40):
        ws.send("hi")
    assert _closed_with(ws) == 1008
    wait_for(lambda: "closing socket: too many messages from client" in web.log())
    _still_serving(web, redis_client, publisher)


def test_a_few_small_frames_are_ignored(web, redis_client, publisher):
    cookie = open_session(web.base_url)
    sid = session_id_of(cookie)
    ws = connect(web.ws_url, cookie)
    try:
        for _ in range(3):
            ws.send("hello?")
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
        publisher.to_session(sid, _stream("after chatter"))
        assert receive(ws) == str(_stream("after chatter"))
    finally:
        ws.close()


def test_sockets_per_session_are_capped(web, redis_client):
    cookie = open_session(web.base_url)
    sockets = [connect(web.ws_url, cookie) for _ in range(3)]
    try:
        assert handshake_status(web.ws_url, cookie) == STATUS_TOO_MANY_SOCKETS
        wait_for(lambda: "too many sockets for this session" in web.log())
        # Another session is not affected.
        assert handshake_status(web.ws_url, open_session(web.base_url)) == 101
        sockets.pop().close()
        wait_for(lambda: handshake_status(web.ws_url, cookie) == 101, what="a freed slot")
    finally:
        for ws in sockets:
            ws.close()


def test_publishing_a_message_over_the_limit_raises_clearly(redis_url):
    publisher = Publisher(redis_url, max_message_bytes=100)
    try:
        with pytest.raises(MessageTooLargeError, match="exceeds the limit of 100 bytes"):
            publisher.to_all(_stream("x" * 200))
    finally:
        publisher.close()


# -- users and streams across processes -------------------------------------------------


def test_a_user_push_reaches_their_sockets_on_two_web_processes(servers, redis_client, publisher):
    a, b = servers
    ann_1 = login(a.base_url, open_session(a.base_url), "ann")
    ann_2 = login(b.base_url, open_session(b.base_url), "ann")  # another browser
    bob = login(a.base_url, open_session(a.base_url), "bob")
    on_a, on_b, bob_ws = connect(a.ws_url, ann_1), connect(b.ws_url, ann_2), connect(a.ws_url, bob)
    try:
        wait_for(lambda: numsub(redis_client, user_channel("ann")) == 2, what="both processes")
        wait_for(lambda: numsub(redis_client, user_channel("bob")) == 1)
        assert publisher.to_user("ann", _stream("hi ann")) == 2
        publisher.to_user("bob", _stream("hi bob"))
        assert receive(on_a) == str(_stream("hi ann"))
        assert receive(on_b) == str(_stream("hi ann"))
        assert receive(bob_ws) == str(_stream("hi bob"))  # ann's never reached bob
    finally:
        for ws in (on_a, on_b, bob_ws):
            ws.close()


STORM_PUBLISHER = textwrap.dedent(
    """
    import json, random, sys
    from markupsafe import Markup
    from turbocast import Publisher, TurboStream

    url, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    addresses = json.loads(sys.argv[4])
    publisher = Publisher(url)
    send = {
        "session": publisher.to_session,
        "user": publisher.to_user,
        "stream": publisher.to_stream,
        "all": lambda _key, stream: publisher.to_all(stream),
    }
    rng = random.Random(worker)
    sent = []
    for n in range(count):
        kind, key = rng.choice(addresses)
        mid = f"{worker}-{n}"
        html = Markup('<p data-id="{}" data-to="{}:{}"></p>').format(mid, kind, key)
        send[kind](key, TurboStream.append("log", html))
        sent.append([mid, kind, key])
    print(json.dumps(sent))
    """
)


class Listener:
    """One storm client: collects every message its socket gets, on its own thread."""

    def __init__(self, ws_url: str, cookie: str, sid: str, user: str, board: str) -> None:
        self.ws = connect(ws_url, cookie)
        self.sid = sid
        self.addresses = {("session", sid), ("user", user), ("stream", board), ("all", "")}
        self.channels = [channel_for(sid), user_channel(user), stream_channel(board)]
        self.received: list[tuple[str, str, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        pattern = re.compile(r'data-id="([^"]+)" data-to="(\w+):([^"]*)"')
        try:
            while True:
                message = self.ws.receive(timeout=60)
                if message is None:
                    return
                for mid, kind, key in pattern.findall(message):
                    self.received.append((mid, kind, key))
        except simple_websocket.ConnectionClosed:
            return


def test_storm_from_several_processes_delivers_everything_to_exactly_its_addressees(
    servers, redis_client, redis_url
):
    users = [f"user{i}" for i in range(5)]
    boards = [1, 2, 3]
    listeners: list[Listener] = []
    for i in range(20):  # 20 sessions, 4 per user, over two web processes
        web = servers[i % 2]
        cookie = login(web.base_url, open_session(web.base_url), users[i % 5])
        url, _ = _board_url(web, cookie, boards[i % 3])
        listeners.append(
            Listener(url, cookie, session_id_of(cookie), users[i % 5], f"board:{boards[i % 3]}")
        )
    try:
        for listener in listeners:
            for channel in listener.channels:
                wait_for(lambda c=channel: numsub(redis_client, c) >= 1, what=channel)

        addresses = (
            [["session", x.sid] for x in listeners]
            + [["user", u] for u in users]
            + [["stream", f"board:{b}"] for b in boards]
            + [["all", ""]] * 4
        )
        publishers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    STORM_PUBLISHER,
                    redis_url,
                    str(w),
                    "300",
                    json.dumps(addresses),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for w in range(4)
        ]
        sent = []
        for process in publishers:
            out, _ = process.communicate(timeout=120)
            assert process.returncode == 0
            sent += [tuple(m) for m in json.loads(out)]
        assert len(sent) == 1200
        kinds = {kind for _, kind, _ in sent}
        assert kinds == {"session", "user", "stream", "all"}

        expected = {
            id(x): sorted(m for m in sent if (m[1], m[2]) in x.addresses) for x in listeners
        }
        wait_for(
            lambda: all(len(x.received) >= len(expected[id(x)]) for x in listeners),
            timeout=60,
            what="every client to receive every message addressed to it",
        )
        assert sum(len(x.received) for x in listeners) > 1200  # broadcasts reach all 20
        for listener in listeners:
            got = listener.received
            misdelivered = [m for m in got if (m[1], m[2]) not in listener.addresses]
            assert not misdelivered, misdelivered[:5]
            assert len(got) == len(set(got)), "duplicates"
            assert sorted(got) == expected[id(listener)], "missing messages"
    finally:
        for listener in listeners:
            listener.ws.close()
