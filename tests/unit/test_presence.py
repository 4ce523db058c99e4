"""Presence on the page's side: the helper's signed request, the admission, the rendering.

The Redis side and two web processes: tests/integration/test_presence.py; in Chromium:
tests/browser/test_presence.py.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, Response, render_template_string
from markupsafe import Markup

from app import create_app
from tests.unit.test_endpoint import SID, _admit_with, _signed
from turbocast import (
    STATUS_BAD_STREAM,
    Turbo,
    TurboError,
    TurboStream,
    member_dom_id,
    presence_target,
    stream_url,
)
from turbocast.endpoint import Admission
from turbocast.signing import PRESENCE_SALT, StreamSigner


def test_the_ids_of_the_members_list_and_of_each_member():
    assert presence_target("board:1") == "presence_board_1"
    assert member_dom_id("board:1", "ada.l@x") == "presence_board_1_ada_l_x"
    with pytest.raises(TurboError):
        presence_target("no spaces")


def _app() -> Flask:
    return create_app({"SECRET_KEY": "x", "REDIS_URL": "redis://127.0.0.1:1/0", "TESTING": True})


def test_the_helper_signs_presence_apart_and_listens_to_the_stream_too():
    app = _app()
    with app.test_request_context("/"):
        query = parse_qs(urlsplit(stream_url(presence=["board:1"], positions=False)).query)
    (stream_token,), (presence_token,) = query["streams"], query["presence"]
    assert StreamSigner("x").unsign(stream_token) == "board:1"
    assert StreamSigner("x", salt=PRESENCE_SALT).unsign(presence_token) == "board:1"
    # One token does not stand for the other.
    with pytest.raises(TurboError):
        StreamSigner("x").unsign(presence_token)
    with pytest.raises(TurboError):
        StreamSigner("x", salt=PRESENCE_SALT).unsign(stream_token)


def test_a_second_source_cannot_ask_for_the_presence_of_a_stream_the_first_listens_to():
    app = _app()
    page = (
        "{{ turbo_stream_source(streams=['board:1'], transport='turbo') }}"
        "{{ turbo_stream_source(presence=['board:1'], transport='turbo') }}"
    )
    with app.test_request_context("/"), pytest.raises(TurboError, match="ask for its presence"):
        render_template_string(page)


def _presence(name: str, salt: str = PRESENCE_SALT) -> tuple[str, str]:
    return ("presence", StreamSigner("x", salt=salt).sign(name))


def test_a_socket_takes_part_in_the_presence_it_asked_for():
    admission = _admit_with([_signed("board:1"), _signed("board:2"), _presence("board:1")])
    assert isinstance(admission, Admission)
    assert admission.presence == ["board:1"]
    assert _admit_with([_signed("board:1")]).presence == []  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "query",
    [
        [_signed("board:1"), ("presence", "board:1")],  # unsigned
        [_signed("board:1"), _presence("board:1", salt="turbocast.stream-name")],  # a stream's
        [_signed("board:1"), _presence("board:2")],  # a stream it does not listen to
    ],
)
def test_a_presence_not_signed_for_or_of_another_stream_is_refused(query, caplog):
    refusal = _admit_with(query)
    assert isinstance(refusal, Response)
    assert refusal.status_code == STATUS_BAD_STREAM
    assert "refused WebSocket handshake" in caplog.text


def test_without_a_renderer_a_join_appends_an_item_and_a_leave_removes_it():
    turbo = Turbo()
    joined = turbo.presence_streams("board:1", "ada", True)
    left = turbo.presence_streams("board:1", "ada", False)
    expected = TurboStream.append("presence_board_1", _li("presence_board_1_ada", "ada"))
    assert [str(s) for s in joined] == [str(expected)]
    assert [str(s) for s in left] == [str(TurboStream.remove("presence_board_1_ada"))]


def _li(dom: str, text: str) -> Markup:
    return Markup('<li id="{}" class="turbo-member">{}</li>').format(dom, text)


def test_a_renderer_returns_one_stream_a_list_or_nothing():
    turbo = Turbo()
    calls = []

    @turbo.presence_renderer
    def render(stream: str, user: str, joined: bool) -> object:
        calls.append((stream, user, joined))
        if user == "none":
            return None
        if user == "many":
            return [TurboStream.remove("a"), TurboStream.remove("b")]
        return TurboStream.remove("one")

    assert len(turbo.presence_streams("board:1", "many", True)) == 2
    assert [str(s) for s in turbo.presence_streams("board:1", "x", False)] == [
        str(TurboStream.remove("one"))
    ]
    assert turbo.presence_streams("board:1", "none", True) == []
    assert calls[0] == ("board:1", "many", True)


def test_a_page_listing_members_still_renders_without_redis(caplog):
    app = _app()  # its Redis: a port nothing listens on
    with app.test_request_context("/"):
        html = render_template_string(
            "[{% for m in turbo_members('board:1') %}{{ m }}{% endfor %}]"
        )
    assert html == "[]"
    assert "no presence members for the page" in caplog.text


def test_a_socket_without_presence_costs_nothing_no_keeper_no_redis():
    from contextlib import ExitStack

    from turbocast.endpoint import _arrive

    app = _app()
    state = app.extensions["turbo"]
    admission = Admission(SID, ["turbo:stream:board:1"], {}, user="ada")
    with ExitStack() as held:
        assert _arrive(state, admission, held) is None
    assert state._keeper is None and state._presence is None
