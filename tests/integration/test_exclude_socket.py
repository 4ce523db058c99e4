"""exclude_socket=: one tab is left out, the same session's other tab and other sessions get it.

Real gunicorn, Redis and ``turbocast.v1`` WebSocket clients. Session A has two tabs
on a board, session B one. A push to the board that excludes A's first tab (by the
socket id the server told it) reaches A's second tab and B once each, and not the
first tab: live, and in a replay (``since=``) to a socket that brings that id back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from tests.support import (
    ResumingClient,
    WebServer,
    numsub,
    open_session,
    page_stream_url,
    wait_for,
)
from turbocast import Publisher, TurboStream, stream_channel, valid_socket_id

BOARD = 6


@pytest.fixture(scope="module")
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(redis_url).start(log_dir)
    try:
        yield server
    finally:
        server.stop()


class Page:
    """One session's board page: its stream URL as rendered (positions before any push)."""

    def __init__(self, web: WebServer) -> None:
        self.cookie = open_session(web.base_url)
        self.url = page_stream_url(web.base_url, f"/boards/{BOARD}", self.cookie)

    def tab(self) -> ResumingClient:
        return ResumingClient(self.url, self.cookie).connect()


def _stream(text: str) -> TurboStream:
    return TurboStream.append("board-messages", Markup("<p>{}</p>").format(text))


def _htmls_until_marker(client: ResumingClient) -> list[str]:
    """What a tab gets up to and including the marker (no push may come twice before it)."""
    htmls = []
    while True:
        _, _, _, html = client.next(timeout=15)
        htmls.append(html)
        if "marker" in html:
            return htmls


def test_a_push_excluding_one_socket_skips_that_tab_only_live_and_in_a_replay(
    web, redis_url, redis_client
):
    a, b = Page(web), Page(web)
    a1, a2, b1 = a.tab(), a.tab(), b.tab()
    try:
        # Every socket is told an id of its own, first.
        ids = [a1.socket_id, a2.socket_id, b1.socket_id]
        assert all(valid_socket_id(i) for i in ids) and len(set(ids)) == 3
        wait_for(lambda: numsub(redis_client, stream_channel(f"board:{BOARD}")) >= 1)

        publisher = Publisher(redis_url)
        try:
            publisher.to_stream(
                f"board:{BOARD}", _stream("not for A1"), exclude_socket=a1.socket_id
            )
            publisher.to_stream(f"board:{BOARD}", _stream("marker"))
        finally:
            publisher.close()

        both = [str(_stream("not for A1")), str(_stream("marker"))]
        assert _htmls_until_marker(a1) == [str(_stream("marker"))]
        assert _htmls_until_marker(a2) == both
        assert _htmls_until_marker(b1) == both

        # Through the history: sockets with the pages' positions from before the pushes.
        # Tab 1 coming back (?socket=<its id>) is left out of the replay too...
        back = ResumingClient(a.url, a.cookie)
        back.socket_id = a1.socket_id
        # ...a socket with a new id (a new page of session A) and session B are not.
        new_tab = ResumingClient(a.url, a.cookie)
        other = ResumingClient(b.url, b.cookie)
        for client, expected in [
            (back, [str(_stream("marker"))]),
            (new_tab, both),
            (other, both),
        ]:
            client.connect()
            try:
                assert _htmls_until_marker(client) == expected
            finally:
                client.close()
        assert back.socket_id == a1.socket_id  # the id it brought back is kept
        assert new_tab.socket_id not in ids
    finally:
        for client in (a1, a2, b1):
            client.close()


def test_a_malformed_socket_id_brought_back_gets_a_new_one(web):
    a = Page(web)
    client = ResumingClient(a.url, a.cookie)
    client.socket_id = "not a socket id!"
    client.connect()
    try:
        assert valid_socket_id(client.socket_id) and client.socket_id != "not a socket id!"
    finally:
        client.close()
