"""permessage-deflate in Chromium: offered by the browser, taken by the server when
``TURBO_WEBSOCKET_DEFLATE`` allows it, and every action still does what Turbo documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_actions import STATE, _push
from tests.browser.test_demo import Tab
from tests.support import WebServer


@pytest.fixture(scope="module")
def deflating(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(redis_url, env={"TURBO_WEBSOCKET_DEFLATE": "true"}).start(log_dir)
    yield server
    server.stop()


def test_chromium_gets_compressed_streams_and_applies_them(context, deflating):
    tab = Tab(context, deflating.base_url)
    # What the browser offered and the server answered, from Chromium's own network log.
    handshakes: list[dict[str, Any]] = []
    cdp = context.new_cdp_session(tab.page)
    cdp.on("Network.webSocketWillSendHandshakeRequest", lambda e: handshakes.append(e))
    cdp.on("Network.webSocketHandshakeResponseReceived", lambda e: handshakes.append(e))
    cdp.send("Network.enable")
    tab.open("/actions")
    tab.connected()
    sid = tab.session_id()

    _push(deflating.redis_url, sid, "every")
    tab.page.wait_for_selector("#many-boxes li b")  # the last stream of the message
    state = tab.page.evaluate(STATE)
    assert state["replace"][:2] == ["replaced", "replaced"]
    assert state["update"][0] == '<p class="updated">updated</p>'
    assert state["removed"] is True
    assert state["many"] == ["<b>many</b>"] * 3

    def header(event: dict[str, Any], name: str) -> str:
        headers = (event.get("request") or event.get("response") or {}).get("headers", {})
        return next((v for k, v in headers.items() if k.lower() == name), "")

    offered = [header(e, "sec-websocket-extensions") for e in handshakes if "request" in e]
    answered = [header(e, "sec-websocket-extensions") for e in handshakes if "response" in e]
    assert offered and "permessage-deflate" in offered[0]
    assert answered and answered[0].startswith("permessage-deflate")
    assert "server_no_context_takeover" in answered[0]
