"""In Chromium: the default stream source across a graceful restart, two sources on one page,
and a custom Turbo Stream action the page registers."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from tests.browser.test_demo import Tab
from tests.support import WebServer, numsub
from turbocast import TurboStream, channel_for


@pytest.fixture
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """A web process of its own, with the library's defaults (no TURBO_TRANSPORT set)."""
    assert "TURBO_TRANSPORT" not in os.environ
    server = WebServer(redis_url).start(log_dir)
    yield server
    server.stop()


def _item(target: str, text: str) -> TurboStream:
    return TurboStream.append(target, Markup('<li class="probe">{}</li>').format(text))


def _workers(web: WebServer) -> list[int]:
    """The pids of the workers gunicorn has booted so far, oldest first."""
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", web.log())]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_default_source_keeps_receiving_across_a_graceful_restart(
    context, web, publisher, redis_client
):
    tab = Tab(context, web.base_url).open()
    sid = tab.session_id()
    tab.wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the socket")
    publisher.to_session(sid, _item("notifications", "before"))
    tab.page.wait_for_selector("li.probe:text('before')")
    tab.page.evaluate("() => { window.documentMark = 'same document' }")
    (old,) = _workers(web)

    assert web.process is not None
    web.process.send_signal(signal.SIGHUP)  # gunicorn boots new workers, then retires the old
    tab.wait_for(lambda: len(_workers(web)) == 2, what="the new worker")
    tab.wait_for(lambda: _gone(old), what="the old worker to exit")
    # Only the new worker can hold a subscription now: the page came back by itself.
    tab.wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the page's return")
    publisher.to_session(sid, _item("notifications", "after"))

    tab.page.wait_for_selector("li.probe:text('after')")
    assert tab.page.evaluate("window.documentMark") == "same document"  # no navigation
    assert tab.page.locator("li.probe").all_inner_texts() == ["before", "after"]


def test_a_page_with_two_sources_applies_each_push_once(context, web, publisher):
    # A board's feed: the layout's source, and the page's own for its board's stream.
    tab = Tab(context, web.base_url).open("/boards/7/feed")
    sources = tab.page.locator("turbocast-stream-source")
    assert sources.count() == 2
    tab.wait_for(
        lambda: tab.page.locator("turbocast-stream-source[connected]").count() == 2,
        what="both sockets",
    )
    sid = tab.session_id()

    publisher.to_session(sid, _item("posts", "session"))
    publisher.to_stream("board:7", _item("posts", "stream"))
    publisher.to_all(_item("posts", "everyone"))
    # Last on each socket: once both are applied, so is everything before them.
    publisher.to_session(sid, _item("posts", "end of session"))
    publisher.to_stream("board:7", _item("posts", "end of stream"))
    tab.page.wait_for_selector("li.probe:text('end of session')")
    tab.page.wait_for_selector("li.probe:text('end of stream')")

    texts = tab.page.locator("#posts li.probe").all_inner_texts()
    assert sorted(texts) == sorted(
        ["session", "stream", "everyone", "end of session", "end of stream"]
    )


def test_a_custom_action_the_page_registers_is_applied_when_pushed(context, web, publisher):
    # The actions page registers Turbo.StreamActions.highlight in a module script.
    tab = Tab(context, web.base_url).open("/actions")
    tab.wait_for(
        lambda: tab.page.locator("turbocast-stream-source[connected]").count() == 1,
        what="the socket",
    )

    publisher.to_session(
        tab.session_id(), TurboStream.custom_action("highlight", "highlight-box", color="gold")
    )

    tab.page.wait_for_selector("#highlight-box[data-highlight='gold']", state="attached")
