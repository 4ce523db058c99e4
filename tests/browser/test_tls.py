"""In Chromium over TLS: the page's stream is wss://, whether gunicorn ends TLS itself
(threads or gevent) or nginx does (the recipe in docs/deploy), and pushes keep arriving
across heartbeats."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from markupsafe import Markup
from playwright.sync_api import Browser, BrowserContext

from tests.browser.test_demo import Tab
from tests.integration.test_proxy_tls import Nginx
from tests.support import WebServer, numsub
from turbocast import Publisher, TurboStream, channel_for

PING_INTERVAL = 1.0


@pytest.fixture
def tls_context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile that accepts the test CA's certificates."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, ignore_https_errors=True)
    context.set_default_timeout(15_000)
    yield context
    context.close()


def _note(text: str) -> TurboStream:
    return TurboStream.append("notifications", Markup('<li class="note">{}</li>').format(text))


def _push_after_heartbeats_arrives(
    tab: Tab, origin: str, publisher: Publisher, redis_client: redis.Redis
) -> None:
    """The page's one wss:// socket stays up across heartbeats; a push then is applied."""
    host = origin.removeprefix("https://")
    src = tab.page.get_attribute("turbocast-stream-source", "src")
    assert src and src.startswith(f"wss://{host}/turbo-stream"), src
    sid = tab.session_id()
    tab.wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
    assert [ws.url.split("?")[0] for ws in tab.sockets] == [f"wss://{host}/turbo-stream"]
    publisher.to_session(sid, _note("first"))
    tab.page.wait_for_selector("li.note >> text=first")

    # More than two heartbeat intervals of nothing but pings.
    quiet_until = time.monotonic() + 2.5 * PING_INTERVAL
    tab.wait_for(lambda: time.monotonic() > quiet_until, what="2.5 heartbeat intervals")
    assert len(tab.sockets) == 1 and not tab.sockets[0].is_closed(), "the socket was replaced"

    publisher.to_session(sid, _note("after the heartbeats"))
    tab.page.wait_for_selector("li.note >> text=after the heartbeats")
    assert tab.page.locator("li.note").all_inner_texts() == ["first", "after the heartbeats"]
    assert len(tab.sockets) == 1 and not tab.sockets[0].is_closed(), "the socket was replaced"


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_gunicorn_ending_tls_itself_delivers_over_wss_across_heartbeats(
    worker_class, tls_context, certificates, redis_url, log_dir, publisher, redis_client
):
    web = WebServer(
        redis_url,
        env={"TURBO_PING_INTERVAL": str(PING_INTERVAL)},
        worker_class=worker_class,
        certificates=certificates,
    ).start(log_dir)
    try:
        tab = Tab(tls_context, web.base_url).open()
        _push_after_heartbeats_arrives(tab, web.base_url, publisher, redis_client)
    except BaseException:
        print(web.log()[-4000:])  # the server's side of a failure, in pytest's report
        raise
    finally:
        web.stop()


def test_nginx_ending_tls_delivers_over_wss_across_heartbeats(
    tls_context, certificates, redis_url, log_dir, publisher, redis_client
):
    web = WebServer(
        redis_url, env={"TURBO_TRUSTED_PROXIES": "1", "TURBO_PING_INTERVAL": str(PING_INTERVAL)}
    ).start(log_dir)
    proxy = Nginx(upstream=f"127.0.0.1:{web.port}", certificates=certificates, idle_timeout="2s")
    try:
        proxy.start(log_dir)
        tab = Tab(tls_context, proxy.base_url).open()
        _push_after_heartbeats_arrives(tab, proxy.base_url, publisher, redis_client)
    finally:
        proxy.stop()
        web.stop()
