"""The demo's views push what they should, to whom they should: captured by the
turbo_broadcasts fixture (turbocast's pytest plugin), with no Redis and no broker."""

from __future__ import annotations

import itertools
import os

import pytest

from app import create_app
from turbocast import MIME_TYPE
from turbocast.helpers import SESSION_KEY

CONFIG = {"REDIS_URL": "redis://127.0.0.1:1/0", "SECRET_KEY": "x", "TESTING": True}
SOCKET = "S" * 24
TURBO = {"Accept": MIME_TYPE}
# Boards of this module's own, apart from other tests' in the shared SQLite file.
_boards = itertools.count(int.from_bytes(os.urandom(3)) * 100)


@pytest.fixture
def app():
    app = create_app(CONFIG)
    yield app
    app.extensions["turbo"].shutdown()


@pytest.fixture
def client(app):
    return app.test_client()


def sid_of(app, client) -> str:
    client.get("/")  # the page with a stream source gives the session its id
    cookie = client.get_cookie("session")
    serializer = app.session_interface.get_signing_serializer(app)
    return serializer.loads(cookie.value)[SESSION_KEY]


def test_notify_enqueues_and_the_worker_pushes_the_notification_to_this_session(
    app, client, turbo_broadcasts
):
    sid = sid_of(app, client)
    response = client.post("/notify", data={"text": "Saved <b>it</b>"}, headers=TURBO)
    assert response.status_code == 200
    turbo_broadcasts.assert_no_broadcasts()  # nothing before a worker ran
    assert [t.name for t in turbo_broadcasts.tasks.pending] == ["turbocast.publish_template"]

    assert turbo_broadcasts.perform_tasks() == 1
    (stream,) = turbo_broadcasts.assert_broadcast(
        session=sid, action="prepend", target="notifications", count=1
    )
    assert "Saved &lt;b&gt;it&lt;/b&gt;" in stream.html  # rendered by the template, escaped


def test_nudge_goes_to_this_session_but_not_the_asking_socket(app, client, turbo_broadcasts):
    sid = sid_of(app, client)
    client.post("/tabs/nudge", headers={**TURBO, "X-Turbocast-Socket": SOCKET})
    turbo_broadcasts.assert_broadcast(
        session=sid,
        action="prepend",
        target="tab-nudges",
        contains="Nudged from another tab",
        exclude_socket=SOCKET,
        count=1,
    )
    assert turbo_broadcasts.all[0].exclude is None


def test_ping_reaches_every_tab_of_the_signed_in_user(app, client, turbo_broadcasts):
    client.post("/login", data={"name": "ada"})
    client.post("/me/ping", headers=TURBO)
    turbo_broadcasts.assert_broadcast(user="ada", action="prepend", target="user-pings", count=1)
    turbo_broadcasts.assert_no_broadcasts(everyone=True)


def test_ping_signed_out_pushes_nothing(client, turbo_broadcasts):
    assert client.post("/me/ping").status_code == 403
    turbo_broadcasts.assert_no_broadcasts()


def test_a_post_is_appended_to_its_board_by_the_model_broadcast(client, turbo_broadcasts):
    board = next(_boards)
    client.post(f"/boards/{board}/messages", data={"text": "Hello board"}, headers=TURBO)
    turbo_broadcasts.perform_tasks()  # the worker's render of the new post
    turbo_broadcasts.assert_broadcast(
        stream=f"board:{board}", action="append", target="posts", contains="Hello board", count=1
    )


def test_renaming_a_board_twice_refreshes_its_pages_once(client, turbo_broadcasts):
    board = next(_boards)
    client.post(f"/boards/{board}/messages", data={"text": "first"})
    turbo_broadcasts.perform_tasks()
    turbo_broadcasts.clear()
    client.post(f"/boards/{board}/rename", data={"name": "One"})
    client.post(f"/boards/{board}/rename", data={"name": "Two"})
    turbo_broadcasts.assert_no_broadcasts()  # the window is open: its send is queued

    turbo_broadcasts.perform_tasks()
    turbo_broadcasts.assert_broadcast(stream=f"board:{board}", action="refresh", count=1)


def test_the_refresh_skips_the_tab_whose_request_asked(client, turbo_broadcasts):
    board = next(_boards)
    client.post(f"/boards/{board}/refresh", headers={"X-Turbo-Request-Id": "req-1"})
    turbo_broadcasts.perform_tasks()
    (refresh,) = turbo_broadcasts.assert_broadcast(stream=f"board:{board}", action="refresh")
    assert refresh.attributes["request-id"] == "req-1"
