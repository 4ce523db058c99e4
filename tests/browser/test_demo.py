"""The demo in real Chromium: Turbo itself applies what Celery tasks push through turbocast."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote

from playwright.sync_api import BrowserContext, Page, WebSocket

from tests.support import ROOT, numsub, session_id_of, wait_for
from turbocast import channel_for


class Tab:
    """One page, recording the WebSockets it opens."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.page: Page = context.new_page()
        self.sockets: list[WebSocket] = []
        self.heard: set[str] = set()  # ids of sockets that received a frame
        self.page.on("websocket", self._opened)
        self.base_url = base_url

    def _opened(self, ws: WebSocket) -> None:
        self.sockets.append(ws)
        ws.on("framereceived", lambda _payload: self.heard.add(str(id(ws))))

    def open(self, path: str = "/") -> Tab:
        self.page.goto(self.base_url + path)
        return self

    def session_id(self) -> str:
        cookies = self.page.context.cookies()
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in cookies if c["name"] == "session")
        return session_id_of(cookie)

    def wait_for(self, condition, what: str = "", timeout: float = 15.0):
        """Poll while the browser's events keep arriving."""
        return wait_for(
            condition,
            timeout=timeout,
            what=what,
            sleep=lambda s: self.page.wait_for_timeout(s * 1000),
        )

    def connected(self, count: int = 1) -> None:
        """Wait until the page has opened ``count`` sockets or more, exactly one of them open,
        and that one has received a frame (beat's clock): it is registered with the relay.

        (A Turbo visit to a cached page renders its preview first, whose source
        connects too; so "or more".)
        """

        def ready() -> bool:
            live = self.live_sockets()
            return len(self.sockets) >= count and len(live) == 1 and str(id(live[0])) in self.heard

        self.wait_for(
            ready,
            what=f"socket #{count} to open",
        )

    def live_sockets(self) -> list[WebSocket]:
        return [ws for ws in self.sockets if not ws.is_closed()]

    def clock(self) -> str:
        return self.page.inner_text("#clock")

    def wait_for_clock_change(self) -> None:
        before = self.clock()
        self.page.wait_for_function(
            "before => document.querySelector('#clock').innerText !== before", arg=before
        )


def test_stream_source_opens_its_socket_at_the_rendered_url(context, stack, redis_client):
    tab = Tab(context, stack.base_url).open()
    src = tab.page.get_attribute("turbocast-stream-source", "src")
    assert src.startswith(f"ws://127.0.0.1:{stack.port}/turbo-stream?since=s~")
    tab.connected()
    assert [unquote(ws.url) for ws in tab.live_sockets()] == [unquote(src)]
    # The socket is subscribed under this browser's own session.
    wait_for(lambda: numsub(redis_client, channel_for(tab.session_id())) == 1)


def test_notify_button_shows_a_notification_pushed_by_a_celery_task(context, stack):
    tab = Tab(context, stack.base_url).open()
    tab.connected()
    tab.page.click("#notify")
    item = tab.page.wait_for_selector("#notifications li.notification")
    assert "You have a new notification" in item.inner_text()
    assert tab.page.inner_text("#notify-status") == "Queued — watch the list."


def test_progress_bar_fills_and_completes(context, stack):
    tab = Tab(context, stack.base_url).open()
    tab.connected()
    # Watch the values Turbo renders into the bar (observing only; Turbo does the work).
    tab.page.evaluate(
        """() => {
            window.seenProgress = [];
            new MutationObserver(() => {
                const bar = document.querySelector('#jobs progress');
                if (bar) window.seenProgress.push(Number(bar.value));
            }).observe(document.querySelector('#jobs'), {childList: true, subtree: true});
        }"""
    )
    tab.page.click("#start-job")
    done = tab.page.wait_for_selector(".job.done .result")
    assert done.inner_text() == "sum of squares 1..6 = 91"
    seen = tab.page.evaluate("window.seenProgress")
    distinct = sorted(set(seen))
    assert distinct[-1] == 6 and len(distinct) >= 4, seen
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert tab.page.get_attribute(".job.done progress", "value") == "6"


def test_periodic_broadcast_changes_the_page(context, stack):
    tab = Tab(context, stack.base_url).open()
    tab.wait_for_clock_change()
    tab.wait_for_clock_change()


def test_a_notification_for_one_session_never_appears_in_another(browser, stack):
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    try:
        a = Tab(ctx_a, stack.base_url).open()
        b = Tab(ctx_b, stack.base_url).open()
        assert a.session_id() != b.session_id()
        a.connected()
        b.connected()
        a.page.click("#notify")
        a.page.wait_for_selector("#notifications li")
        # B then asks for its own; once it arrives, A's would have too (same relay, in order).
        b.page.click("#notify")
        b.page.wait_for_selector("#notifications li")
        b.wait_for_clock_change()
        assert b.page.locator("#notifications li").count() == 1
        assert a.page.locator("#notifications li").count() == 1
    finally:
        ctx_a.close()
        ctx_b.close()


def test_source_reconnects_after_turbo_navigation_and_updates_keep_arriving(context, stack):
    tab = Tab(context, stack.base_url).open()
    tab.connected()
    tab.page.evaluate("window.turboVisitMarker = 'still the same document'")

    tab.page.click("text=About")
    tab.page.wait_for_selector("#about")
    tab.connected(2)
    tab.wait_for_clock_change()

    tab.page.click("#back-home")
    tab.page.wait_for_selector("#notify")
    tab.connected(3)
    # Turbo Drive swapped the body; the document (and its JS state) never reloaded.
    assert tab.page.evaluate("window.turboVisitMarker") == "still the same document"
    tab.wait_for_clock_change()
    tab.page.click("#notify")
    tab.page.wait_for_selector("#notifications li")


def test_screenshot_of_the_demo_in_use(context, stack, tmp_path):
    tab = Tab(context, stack.base_url).open()
    tab.connected()
    tab.page.click("#notify")
    tab.page.wait_for_selector("#notifications li")
    tab.page.click("#start-job")
    tab.page.wait_for_selector(".job.done")
    tab.page.click("#start-job")
    # Catch the new job part way: its bar filling while the first one shows its result.
    tab.page.wait_for_function(
        "(jobs => jobs.length === 2 && Number(jobs[0].dataset.done) >= 2)"
        "(document.querySelectorAll('#jobs .job'))"
    )
    shot = tmp_path / "demo.png"
    tab.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
    # `make test SCREENSHOT=1` refreshes the committed docs/demo.png.
    if os.environ.get("SCREENSHOT") == "1":
        target: Path = ROOT / "docs" / "demo.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)


def test_a_board_post_reaches_every_page_on_that_board_only(browser, stack):
    contexts = [browser.new_context() for _ in range(3)]
    try:
        on_1a, on_1b, on_2 = (Tab(c, stack.base_url) for c in contexts)
        for tab, board in ((on_1a, 1), (on_1b, 1), (on_2, 2)):
            tab.open(f"/boards/{board}").connected()
        on_1a.page.fill("#board-text", "hello board one")
        on_1a.page.click("#post-to-board")
        for tab in (on_1a, on_1b):
            assert "hello board one" in tab.page.wait_for_selector(".board-message").inner_text()
        on_2.page.fill("#board-text", "hello board two")
        on_2.page.click("#post-to-board")
        assert "hello board two" in on_2.page.wait_for_selector(".board-message").inner_text()
        assert on_2.page.locator(".board-message").count() == 1
        assert on_1b.page.locator(".board-message").count() == 1
    finally:
        for c in contexts:
            c.close()


def test_a_user_push_reaches_every_browser_signed_in_as_that_user(browser, stack):
    contexts = [browser.new_context() for _ in range(3)]
    try:
        tabs = [Tab(c, stack.base_url).open() for c in contexts]
        for tab, name in zip(tabs, ["ann", "ann", "bob"], strict=True):
            tab.page.fill("#login-name", name)
            tab.page.click("#login")
            tab.page.wait_for_selector("#user-name")
            tab.connected(2)  # the page after signing in has a socket of its own
        tabs[0].page.click("#ping-tabs")
        for tab in tabs[:2]:
            assert "Hello ann" in tab.page.wait_for_selector(".user-ping").inner_text()
        tabs[2].page.click("#ping-tabs")
        assert "Hello bob" in tabs[2].page.wait_for_selector(".user-ping").inner_text()
        assert tabs[2].page.locator(".user-ping").count() == 1
    finally:
        for c in contexts:
            c.close()
