"""In Chromium: wait_for_stream_source returns once the page's source is connected, the
attribute goes when the web server goes, and a push made after it returns arrives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from tests.browser.test_demo import Tab
from tests.support import WebServer
from turbocast import TurboStream
from turbocast.testing import wait_for_stream_source

pytestmark = pytest.mark.browser


@pytest.fixture
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(redis_url).start(log_dir)
    yield server
    server.stop()


def test_a_push_after_wait_for_stream_source_reaches_the_page(context, web, publisher):
    tab = Tab(context, web.base_url).open("/")
    wait_for_stream_source(tab.page, timeout=15)
    publisher.to_session(
        tab.session_id(), TurboStream.append("notifications", Markup('<li id="hi">hi</li>'))
    )
    tab.page.wait_for_selector("#hi")

    web.stop()  # the socket closes: the element removes the attribute
    tab.page.wait_for_selector("turbocast-stream-source:not([connected])", state="attached")
