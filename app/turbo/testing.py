"""turbocast's pytest plugin, installed with the package (the ``pytest11`` entry point).

Loading it imports nothing but the standard library and pytest: Flask, Redis and the
rest are imported when a test asks for the fixture.

- ``turbo_broadcasts``: a fixture that captures every push of your ``app`` fixture's
  Flask app during the test, without Redis or a broker, with assertions and a way to run
  turbocast's queued tasks (:class:`turbocast.capture.Broadcasts`).
- :func:`wait_for_stream_source`: for browser tests, wait until a Playwright page's
  stream source is connected.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capture import Broadcasts

#: The elements that carry ``connected`` while their socket is open: turbocast's own
#: (``TURBO_TRANSPORT="websocket"``, the default) and Turbo's (``"turbo"``).
STREAM_SOURCES = "turbocast-stream-source, turbo-stream-source"

_ALL_CONNECTED = """(selector) => {
  const sources = [...document.querySelectorAll(selector)];
  return sources.length > 0 && sources.every((s) => s.hasAttribute("connected"));
}"""


def wait_for_stream_source(
    page: Any, timeout: float = 10.0, selector: str = STREAM_SOURCES
) -> None:
    """Wait until every stream source of a Playwright page is connected.

    Both elements set the ``connected`` attribute when their socket opens and remove it
    when it closes. turbocast's endpoint accepts the socket only once Redis confirmed its
    subscriptions, so a push published after this returns reaches the page.

    :param page: a Playwright ``Page`` (sync API); Playwright is not imported here.
    :param timeout: seconds to wait before Playwright raises its ``TimeoutError``.
    :param selector: which elements to wait for.
    """
    page.wait_for_function(_ALL_CONNECTED, arg=selector, timeout=timeout * 1000)


try:
    import pytest
except ModuleNotFoundError:  # pragma: no cover - the helpers above work without pytest
    pass
else:

    @pytest.fixture
    def turbo_broadcasts(request: pytest.FixtureRequest) -> Iterator[Broadcasts]:
        """Every push of the test's Flask app (your ``app`` fixture), captured, not sent.

        ::

            def test_post(client, turbo_broadcasts):
                client.post("/boards/1/messages", data={"text": "Hello"})
                turbo_broadcasts.perform_tasks()   # what a worker would render and send
                turbo_broadcasts.assert_broadcast(stream="board:1", action="append",
                                                  target="posts", contains="Hello", count=1)
        """
        from .capture import capture_broadcasts

        with capture_broadcasts(request.getfixturevalue("app")) as broadcasts:
            yield broadcasts
