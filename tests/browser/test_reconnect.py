"""In Chromium: the page keeps receiving after the server cuts its socket, missing nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from tests.browser.test_demo import Tab
from tests.support import WebServer, numsub, wait_for
from turbocast import TurboStream, channel_for


@pytest.fixture
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """A web process of its own (no worker or beat needed), to be restarted."""
    server = WebServer(redis_url).start(log_dir)
    yield server
    server.stop()


def _note(n: int) -> TurboStream:
    return TurboStream.append("notifications", Markup('<li class="note">note {}</li>').format(n))


def test_the_page_keeps_receiving_after_its_socket_is_cut_by_the_server(
    context, web, publisher, redis_client
):
    tab = Tab(context, web.base_url).open()
    events: list[str] = []
    tab.page.expose_function("recordTurbocastEvent", lambda event: events.append(event))
    tab.page.evaluate(
        """() => ['turbocast:connect', 'turbocast:disconnect'].forEach(name =>
            document.addEventListener(name, e =>
                window.recordTurbocastEvent(name + ' ' + (e.detail.code ?? ''))))"""
    )
    sid = tab.session_id()
    tab.wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the socket")
    publisher.to_session(sid, _note(1))
    tab.page.wait_for_selector("text=note 1")

    web.stop()  # the server goes away: its sockets are closed with 1001
    tab.wait_for(lambda: "turbocast:disconnect 1001" in events, what="the 1001 close")
    publisher.to_session(sid, _note(2))  # while the page has no socket

    web.start(web.log_path.parent)  # the same port
    tab.wait_for(lambda: events.count("turbocast:connect ") >= 1, what="the reconnect")
    tab.page.wait_for_selector("text=note 2")  # replayed from the history
    wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1)
    publisher.to_session(sid, _note(3))
    tab.page.wait_for_selector("text=note 3")
    assert tab.page.locator("li.note").all_inner_texts() == ["note 1", "note 2", "note 3"]
