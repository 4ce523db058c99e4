"""In Chromium: a Turbo form submission names its tab's socket, and a push that leaves
out that socket reaches the same session's other tab but not the tab that submitted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from tests.browser.test_demo import Tab
from tests.support import WebServer
from turbocast import TurboStream, valid_socket_id

SOCKET_ID = "() => document.querySelector('turbocast-stream-source')?.socketId"


@pytest.fixture(scope="module")
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """A web process of its own (the default transport: the reconnecting element)."""
    server = WebServer(redis_url).start(log_dir)
    yield server
    server.stop()


def _socket_id(tab: Tab) -> str:
    """The id the server told the page's socket (waits for it)."""
    tab.page.wait_for_function(SOCKET_ID)
    return str(tab.page.evaluate(SOCKET_ID))


def test_a_push_excluding_the_submitting_tabs_socket_reaches_the_sessions_other_tab_only(
    context, web, publisher
):
    tab1, tab2 = Tab(context, web.base_url).open(), Tab(context, web.base_url).open()
    id1, id2 = _socket_id(tab1), _socket_id(tab2)
    assert valid_socket_id(id1) and valid_socket_id(id2) and id1 != id2
    sid = tab1.session_id()
    assert tab2.session_id() == sid  # one browser context: one session, two tabs

    with tab1.page.expect_request(lambda r: r.url.endswith("/tabs/nudge")) as request:
        tab1.page.click("#nudge-tabs")
    assert request.value.headers.get("x-turbocast-socket") == id1

    tab1.page.wait_for_selector("#nudge-status:text('Sent to your other tabs.')")
    tab2.page.wait_for_selector("#tab-nudges li.nudge")
    # A later push to the whole session reaches tab 1: by then the nudge would have too.
    marker = Markup('<li class="marker">marker</li>')
    publisher.to_session(sid, TurboStream.append("tab-nudges", marker))
    tab1.page.wait_for_selector("#tab-nudges li.marker")
    tab2.page.wait_for_selector("#tab-nudges li.marker")
    assert tab1.page.locator("#tab-nudges li.nudge").count() == 0
    assert tab2.page.locator("#tab-nudges li.nudge").count() == 1
