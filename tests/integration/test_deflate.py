"""permessage-deflate on a real gunicorn, in both serving modes: negotiated when the client
offers it and the setting allows, each message compressed once, Turbo Streams intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup
from wsproto.events import AcceptConnection, TextMessage
from wsproto.extensions import PerMessageDeflate

from tests.support import RawClient, WebServer, open_session, session_id_of
from turbocast import Publisher, TurboStream


@pytest.fixture(scope="module", params=["gthread", "gevent"])
def web(request: pytest.FixtureRequest, redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(
        redis_url, env={"TURBO_WEBSOCKET_DEFLATE": "true"}, worker_class=request.param
    ).start(log_dir)
    yield server
    server.stop()


def _rows(n: int) -> Markup:
    # What a rendered list looks like: the same markup again and again.
    return Markup("".join(f'<li class="message" id="message_{i}">Row {i}</li>' for i in range(n)))


def _read(client: RawClient, count: int) -> list[str]:
    messages: list[str] = []
    while len(messages) < count:
        for event in client.events:
            if isinstance(event, TextMessage):
                assert event.message_finished
                messages.append(event.data)
        client.events = []
        if len(messages) < count:
            assert client._pump(), "the server hung up"
    return messages


def test_a_client_offering_deflate_gets_every_message_compressed_and_intact(
    web: WebServer, publisher: Publisher
):
    cookie = open_session(web.base_url)
    client = RawClient(web.ws_url, cookie, extensions=[PerMessageDeflate()])
    try:
        [accepted] = [e for e in client.events if isinstance(e, AcceptConnection)]
        [deflate] = accepted.extensions
        assert isinstance(deflate, PerMessageDeflate) and deflate.server_no_context_takeover
        streams = [
            TurboStream.append("messages", _rows(40)),
            TurboStream.update("count", Markup("7")),  # (too small to gain: sent as it is)
            TurboStream.replace("list", _rows(80)),
        ]
        for stream in streams:
            publisher.to_session(session_id_of(cookie), stream)
        got = _read(client, 3)
        sent = [str(s) for s in streams]
        assert got == sent
        # What crossed the wire is a fraction of the HTML: each message deflated on its own.
        assert client.received_bytes < sum(len(s) for s in sent) / 3
    finally:
        client.close()


def _plain_frames(server: WebServer, publisher: Publisher, offer: list[PerMessageDeflate]) -> None:
    """A socket that did not negotiate deflate gets the message as it is."""
    cookie = open_session(server.base_url)
    client = RawClient(server.ws_url, cookie, extensions=offer)
    try:
        [accepted] = [e for e in client.events if isinstance(e, AcceptConnection)]
        assert accepted.extensions == []
        stream = TurboStream.append("messages", _rows(40))
        publisher.to_session(session_id_of(cookie), stream)
        assert _read(client, 1) == [str(stream)]
        assert client.received_bytes > len(str(stream))
    finally:
        client.close()


def test_a_client_that_does_not_offer_it_gets_plain_frames(web: WebServer, publisher: Publisher):
    _plain_frames(web, publisher, offer=[])


@pytest.fixture(scope="module")
def default_web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(redis_url).start(log_dir)
    yield server
    server.stop()


def test_it_is_off_unless_the_setting_allows_it(default_web: WebServer, publisher: Publisher):
    _plain_frames(default_web, publisher, offer=[PerMessageDeflate()])
