"""Presence in real Chromium: who has a board open, once per user, gone after the grace period.

Two browsers (two contexts: two cookies, two sessions) are signed in as "ada" and "bob"
and open the same board page of the demo, whose source takes part in the presence of
the stream ``board:<id>``. Each page lists the members at its first render and Turbo
applies the joins and leaves the web process pushes: an avatar ``<li>`` appended, or
removed. The demo runs with a short ``TURBO_PRESENCE_GRACE`` so that a leave comes
soon after a user's last page closed, and a board id no other test uses, whose presence
keys are emptied first.

Turbo's ``append`` replaces a child with the same id, so an avatar shown once does not
prove that its join was pushed once: the pages record the frames their sockets receive,
and a join or a leave pushed twice, or pushed when it should not be, shows there.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from markupsafe import Markup
from playwright.sync_api import Browser, BrowserContext, Response, WebSocket

from tests.browser.conftest import ENV
from tests.browser.test_demo import Tab
from tests.support import WebServer, demo_stack, wait_for
from turbocast import DEFAULTS, Presence, TurboStream, member_dom_id, presence_target
from turbocast.presence import REAP_SECONDS, presence_keys

pytestmark = pytest.mark.browser

#: Seconds a user stays a member after their last page closed, in this module's demo.
GRACE = 1.0
#: Board ids no other browser test uses (test_demo: 1-3, test_sources: 7, test_models: 100+).
BOARDS = itertools.count(4201)


@pytest.fixture(scope="module")
def presence_stack(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """The demo as `make run` runs it, with a short grace period."""
    env = {**ENV, "TURBO_PRESENCE_GRACE": str(GRACE)}
    with demo_stack(redis_url, log_dir, env) as web:
        yield web


@pytest.fixture
def presence(redis_client: redis.Redis) -> Presence:
    """The presence the demo keeps in the test Redis, read from here."""
    return Presence(redis_client, prefix=str(DEFAULTS["TURBO_CHANNEL_PREFIX"]), grace=GRACE)


@pytest.fixture
def board(redis_client: redis.Redis) -> int:
    """A fresh board: its presence keys emptied, so nothing left over can count."""
    board_id = next(BOARDS)
    redis_client.delete(*presence_keys(f"board:{board_id}", str(DEFAULTS["TURBO_CHANNEL_PREFIX"])))
    return board_id


class BoardTab(Tab):
    """A tab on a board page that records every frame its sockets receive."""

    def __init__(self, context: BrowserContext, base_url: str, board_id: int) -> None:
        self.frames: list[str] = []
        super().__init__(context, base_url)
        self.stream = f"board:{board_id}"
        self.path = f"/boards/{board_id}"
        self.first_render = ""

    def _opened(self, ws: WebSocket) -> None:
        super()._opened(ws)
        ws.on("framereceived", lambda payload: self.frames.append(str(payload)))

    def open_board(self) -> BoardTab:
        """Open the board page and wait until its socket is in (its join pushed, if any)."""
        response: Response | None = self.page.goto(self.base_url + self.path)
        assert response is not None and response.ok
        self.first_render = response.text()
        self.page.evaluate("window.sameDocument = true")  # gone if the page reloads
        self.connected()
        return self

    def avatar(self, user: str) -> str:
        return "#" + member_dom_id(self.stream, user)

    def avatars(self) -> list[str]:
        """The users whose avatar the members list shows, in its order (repeats kept)."""
        return self.page.eval_on_selector_all(
            f"#{presence_target(self.stream)} > li.member",
            "items => items.map(li => li.title)",
        )

    def rendered_members(self) -> list[str]:
        """The users the page's members list held at its first render (from its HTML)."""
        target = presence_target(self.stream)
        match = re.search(rf'<ul class="members" id="{target}">(.*?)</ul>', self.first_render)
        assert match, self.first_render[:1000]
        return re.findall(r'<li class="member" id="[^"]+" title="([^"]+)"', match.group(1))

    def joins(self, user: str) -> int:
        """How many joins of ``user`` this page's sockets received."""
        dom_id = member_dom_id(self.stream, user)
        return sum(1 for f in self.frames if 'action="append"' in f and f'id="{dom_id}"' in f)

    def leaves(self, user: str) -> int:
        """How many leaves of ``user`` this page's sockets received."""
        dom_id = member_dom_id(self.stream, user)
        return sum(1 for f in self.frames if f'action="remove" target="{dom_id}"' in f)

    def still_same_document(self) -> bool:
        return bool(self.page.evaluate("window.sameDocument === true"))


class Marker:
    """A push to the board's stream after everything before it: once a page shows it,
    whatever the server pushed to that stream earlier has reached the page too."""

    def __init__(self, publisher, stream: str) -> None:
        self.publisher = publisher
        self.stream = stream
        self.count = itertools.count()

    def through(self, *tabs: BoardTab) -> None:
        dom_id = f"presence-marker-{next(self.count)}"
        html = Markup(f'<li id="{dom_id}" hidden>marker</li>')
        self.publisher.to_stream(self.stream, TurboStream.append("posts", html))
        for tab in tabs:
            tab.page.wait_for_selector(f"#{dom_id}", state="attached")


def sign_in(browser: Browser, base_url: str, name: str) -> BrowserContext:
    """A browser profile of its own (its own cookie), signed in as ``name``."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(base_url + "/")
    page.fill("#login-name", name)
    page.click("#login")
    page.wait_for_selector(f"#user-name:text-is('{name}')")
    page.close()
    return context


@pytest.fixture
def ada(browser: Browser, presence_stack: WebServer) -> Iterator[BrowserContext]:
    context = sign_in(browser, presence_stack.base_url, "ada")
    yield context
    context.close()


@pytest.fixture
def bob(browser: Browser, presence_stack: WebServer) -> Iterator[BrowserContext]:
    context = sign_in(browser, presence_stack.base_url, "bob")
    yield context
    context.close()


def wait_gone(tab: BoardTab, user: str) -> None:
    tab.page.wait_for_selector(tab.avatar(user), state="detached", timeout=GRACE * 1000 + 10_000)


def test_a_page_lists_who_is_already_there_at_its_first_render(
    ada, bob, presence_stack, board, presence, publisher
):
    web = presence_stack
    ada_tab = BoardTab(ada, web.base_url, board).open_board()
    ada_tab.page.wait_for_selector(ada_tab.avatar("ada"))
    assert presence.members(ada_tab.stream) == ["ada"]

    bob_tab = BoardTab(bob, web.base_url, board).open_board()
    # Ada is in the HTML the server rendered, before bob's socket was even open ...
    assert bob_tab.rendered_members() == ["ada"]
    # ... and not pushed to bob's page: she was there already. Bob's own join was.
    bob_tab.page.wait_for_selector(bob_tab.avatar("bob"))
    Marker(publisher, bob_tab.stream).through(ada_tab, bob_tab)
    assert bob_tab.joins("ada") == 0
    assert bob_tab.joins("bob") == 1
    assert bob_tab.avatars() == ["ada", "bob"]
    assert ada_tab.avatars() == ["ada", "bob"]


def test_members_see_each_other_come_once_and_go_after_the_grace_period(
    ada, bob, presence_stack, board, presence, publisher
):
    web = presence_stack
    stream = f"board:{board}"
    marker = Marker(publisher, stream)

    # Ada opens the board: her own avatar is pushed to her page (nobody was listed).
    ada_tab = BoardTab(ada, web.base_url, board).open_board()
    assert ada_tab.rendered_members() == []
    ada_tab.page.wait_for_selector(ada_tab.avatar("ada"))
    assert ada_tab.avatars() == ["ada"]

    # Bob opens it: his avatar appears on ada's page, without a reload.
    bob_1 = BoardTab(bob, web.base_url, board).open_board()
    ada_tab.page.wait_for_selector(ada_tab.avatar("bob"))
    assert ada_tab.still_same_document()
    assert ada_tab.avatars() == ["ada", "bob"]
    bob_1.page.wait_for_selector(bob_1.avatar("bob"))
    assert bob_1.avatars() == ["ada", "bob"]

    # A second tab of bob's is no second join: ada's page heard bob join once.
    bob_2 = BoardTab(bob, web.base_url, board).open_board()
    assert bob_2.rendered_members() == ["ada", "bob"]
    assert presence.members(stream) == ["ada", "bob"]
    assert presence.connections(stream) == 3
    marker.through(ada_tab, bob_1, bob_2)
    assert ada_tab.joins("bob") == 1
    assert bob_1.joins("bob") == 1
    assert bob_2.joins("bob") == 0
    for tab in (ada_tab, bob_1, bob_2):
        assert tab.avatars() == ["ada", "bob"]

    # Ada closes her page: after the grace period, her avatar goes from bob's pages.
    closed = time.monotonic()
    ada_tab.page.close()
    wait_gone(bob_1, "ada")
    assert time.monotonic() - closed >= GRACE, "ada left before the grace period was over"
    wait_gone(bob_2, "ada")
    assert presence.members(stream) == ["bob"]
    assert bob_1.still_same_document() and bob_2.still_same_document()
    assert bob_1.avatars() == bob_2.avatars() == ["bob"]

    # She comes back: her avatar appears on bob's pages again (they opened after she had
    # joined: this is the one join of hers they heard), pushed once to each.
    ada_tab = BoardTab(ada, web.base_url, board).open_board()
    assert ada_tab.rendered_members() == ["bob"]
    for tab in (bob_1, bob_2):
        tab.page.wait_for_selector(tab.avatar("ada"))
    marker.through(ada_tab, bob_1, bob_2)
    for tab in (bob_1, bob_2):
        assert tab.still_same_document()
        assert tab.joins("ada") == 1 and tab.leaves("ada") == 1
        assert tab.avatars() == ["bob", "ada"]
    assert ada_tab.avatars() == ["bob", "ada"]

    # Bob closes one of his two tabs: once its socket's entry is reaped, he is still there.
    sockets, _ = presence_keys(stream, str(DEFAULTS["TURBO_CHANNEL_PREFIX"]))
    bob_2.page.close()
    wait_for(
        lambda: presence.client.zcard(sockets) == 2,
        timeout=GRACE + 10 * REAP_SECONDS + 5,
        what="bob's closed tab's entry to be reaped",
        sleep=lambda s: ada_tab.page.wait_for_timeout(s * 1000),
    )
    marker.through(ada_tab, bob_1)
    assert presence.members(stream) == ["ada", "bob"]
    assert ada_tab.leaves("bob") == 0
    assert ada_tab.avatars() == ["bob", "ada"]

    # He closes the other: after the grace period, his avatar goes from ada's page, once.
    closed = time.monotonic()
    bob_1.page.close()
    wait_gone(ada_tab, "bob")
    assert time.monotonic() - closed >= GRACE, "bob left before the grace period was over"
    marker.through(ada_tab)
    assert ada_tab.still_same_document()
    assert ada_tab.leaves("bob") == 1
    assert ada_tab.avatars() == ["ada"]
    assert presence.members(stream) == ["ada"]
