"""turbocast's pytest plugin: the turbo_broadcasts fixture, its assertions and its messages."""

from __future__ import annotations

import pytest
from flask import Flask

from turbocast import Turbo, TurboStream
from turbocast.capture import capture_broadcasts
from turbocast.testing import wait_for_stream_source

pytest_plugins = ["pytester"]
SID = "A" * 32


@pytest.fixture
def app():
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", REDIS_URL="redis://127.0.0.1:1/0")
    Turbo(app)
    return app


def test_every_audience_and_a_batch_are_captured_without_redis(app):
    turbo: Turbo = app.extensions["turbo"].turbo
    with app.app_context(), capture_broadcasts(app) as captured:
        turbo.to_session(SID, TurboStream.append("a", "1"), exclude_socket="s" * 16)
        turbo.to_user(7, TurboStream.update("b", "2"))
        turbo.to_all(TurboStream.remove("c"), exclude=SID)
        with turbo.batch() as batch:
            batch.to_stream("board:1", TurboStream.append("posts", "Hello"))
            batch.to_stream("board:1", TurboStream.remove("post-1"))
    assert [(b.audience, b.name) for b in captured] == [
        ("session", SID),
        ("user", "7"),
        ("all", None),
        ("stream", "board:1"),
        ("stream", "board:1"),
    ]
    captured.assert_broadcast(session=SID, action="append", target="a", exclude_socket="s" * 16)
    captured.assert_broadcast(user=7, target="b", contains="2", count=1)
    captured.assert_broadcast(everyone=True, action="remove", exclude=SID)
    captured.assert_broadcast(stream="board:1", count=2)
    captured.assert_no_broadcasts(stream="board:2")


def test_the_app_publishes_to_redis_again_after_the_block(app):
    state = app.extensions["turbo"]
    with app.app_context():
        with capture_broadcasts(app):
            pass
        assert type(state.publisher).__name__ == "Publisher"


def test_a_failing_assertion_lists_what_was_captured(app):
    with app.app_context(), capture_broadcasts(app) as captured:
        app.extensions["turbo"].turbo.to_stream("board:1", TurboStream.append("posts", "Hi"))
        with pytest.raises(AssertionError) as failure:
            captured.assert_broadcast(stream="board:1", target="comments", count=1)
    message = str(failure.value)
    expected = "expected 1 turbo stream(s) matching stream='board:1' target='comments', got 0"
    assert expected in message
    assert "Captured 1 broadcast(s):" in message
    assert '1. to stream \'board:1\': <turbo-stream action="append" target="posts">' in message


def test_the_fixture_is_registered_by_the_installed_plugin_and_fails_usefully(pytester):
    pytester.makepyfile(
        """
        import pytest
        from flask import Flask
        from turbocast import Turbo, TurboStream

        @pytest.fixture
        def app():
            app = Flask(__name__)
            app.config.update(SECRET_KEY="x", REDIS_URL="redis://127.0.0.1:1/0")
            turbo = Turbo(app)

            @app.post("/say")
            def say():
                turbo.to_stream("room:1", TurboStream.append("lines", "Hello"))
                return ""

            return app

        def test_pushed(app, turbo_broadcasts):
            app.test_client().post("/say")
            turbo_broadcasts.assert_broadcast(stream="room:1", action="append", contains="Hello")

        def test_wrong_room(app, turbo_broadcasts):
            app.test_client().post("/say")
            turbo_broadcasts.assert_broadcast(stream="room:2")
        """
    )
    # Only the entry point loads the plugin here: no conftest, no -p.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected at least 1 turbo stream(s) matching stream='room:2', got 0.*",
            '*1. to stream \'room:1\': <turbo-stream action="append" target="lines">*',
        ]
    )


def test_a_project_without_an_app_fixture_still_runs(pytester):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_loading_the_plugin_imports_neither_flask_nor_redis():
    import subprocess
    import sys

    code = (
        "import sys, turbocast.testing; "
        "print(sorted(m for m in ('flask', 'redis', 'celery', 'playwright') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class FakePage:
    def __init__(self):
        self.calls = []

    def wait_for_function(self, expression, *, arg, timeout):
        self.calls.append((expression, arg, timeout))


def test_wait_for_stream_source_waits_for_every_source_to_be_connected():
    page = FakePage()
    wait_for_stream_source(page, timeout=2)
    ((expression, selector, timeout),) = page.calls
    assert 'hasAttribute("connected")' in expression
    assert selector == "turbocast-stream-source, turbo-stream-source"
    assert timeout == 2000
