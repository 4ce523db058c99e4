"""Sign-out in real Chromium: the other tab stops hearing the user at once, keeps its session's.

Two tabs of one browser (one cookie) are signed in as one user. Signing out in one
rotates the browser's session id and closes the old session's and the user's sockets
on every web process (close 4003); the other tab's element reloads the page through
Turbo, under the identity the cookie names now.
"""

from __future__ import annotations

from markupsafe import Markup
from playwright.sync_api import WebSocket

from tests.browser.test_demo import Tab
from turbocast import TurboStream


class RecordingTab(Tab):
    """A tab that keeps every frame its sockets receive, across reloads."""

    def __init__(self, *args, **kwargs) -> None:
        self.frames: list[str] = []
        super().__init__(*args, **kwargs)

    def _opened(self, ws: WebSocket) -> None:
        super()._opened(ws)
        ws.on("framereceived", lambda payload: self.frames.append(str(payload)))


def _push(html: str, dom_id: str) -> TurboStream:
    return TurboStream.append("user-pings", Markup(f'<li id="{dom_id}">{html}</li>'))


def test_signing_out_in_one_tab_stops_the_users_pushes_in_the_other_at_once(
    context, stack, publisher
):
    a = RecordingTab(context, stack.base_url).open()
    b = RecordingTab(context, stack.base_url).open()
    a.connected()
    b.connected()

    # Signing in rotates the session: tab B's socket of the old one closes and B reloads,
    # signed in too.
    a.page.fill("#login-name", "dora")
    a.page.click("#login")
    a.page.wait_for_selector("#user-name:text-is('dora')")
    b.page.wait_for_selector("#user-name:text-is('dora')")
    a.connected(2)
    b.connected(2)
    publisher.to_user("dora", _push("for dora, signed in", "before"))
    a.page.wait_for_selector("#before")
    b.page.wait_for_selector("#before")
    frames_before = len(b.frames)

    # Sign out in tab A; the moment its answer is in, push to the user again.
    sockets_b = len(b.sockets)
    a.page.click("#logout")
    a.page.wait_for_selector("#login-name")
    publisher.to_user("dora", _push("for dora, after sign-out", "after-user"))

    # Tab B's socket was closed (4003) and it reloaded under the new session, signed out.
    b.page.wait_for_selector("#login-name")
    b.connected(sockets_b + 1)
    publisher.to_session(b.session_id(), _push("for this browser", "after-session"))
    b.page.wait_for_selector("#after-session")
    a.page.wait_for_selector("#after-session")

    # The user's push after sign-out reached neither tab, not even the closing socket.
    assert not [f for f in b.frames[frames_before:] if "after-user" in f]
    assert not [f for f in a.frames if "after-user" in f]
    assert b.page.query_selector("#after-user") is None
    closed = [ws for ws in b.sockets[:sockets_b] if ws.is_closed()]
    assert len(closed) == sockets_b, "tab B's signed-in socket is still open"
