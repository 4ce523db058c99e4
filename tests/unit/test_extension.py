"""turbocast.extension: the session cookie, the endpoint's refusals, and the per-app state."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from turbocast import STATUS_SERVER_CANNOT_HOLD, Turbo
from turbocast.errors import TurboError
from turbocast.extension import DEFAULTS, TurboState
from turbocast.helpers import SESSION_KEY
from turbocast.publisher import Publisher

# Turbo's own element (not the default): the handshake tests read its plain URL.
CONFIG = {
    "SECRET_KEY": "x",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "TESTING": True,
    "TURBO_TRANSPORT": "turbo",
}


class ThreadedServerClient(FlaskClient):
    """Flask's test client, saying what a threaded server (gthread, Werkzeug) says.

    turbocast refuses streams on a server that serves one request at a time, and
    the test client's environ says ``wsgi.multithread`` is false.
    """

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("environ_overrides", {}).setdefault("wsgi.multithread", True)
        return super().open(*args, **kwargs)


@pytest.fixture
def app():
    app = create_app(CONFIG)
    app.test_client_class = ThreadedServerClient
    yield app
    app.extensions["turbo"].shutdown()


def session_of(app: Flask, client) -> dict:
    cookie = client.get_cookie("session")
    assert cookie is not None, "no session cookie was set"
    serializer = app.session_interface.get_signing_serializer(app)
    assert serializer is not None
    return serializer.loads(cookie.value)


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "turbo-relay"]


# -- the session cookie --------------------------------------------------------------------


def test_first_page_sets_a_signed_session_cookie_with_a_turbo_sid(app):
    client = app.test_client()

    response = client.get("/")

    assert response.status_code == 200
    sid = session_of(app, client)[SESSION_KEY]
    assert isinstance(sid, str) and len(sid) == 32


def test_later_pages_keep_the_same_session_id(app):
    client = app.test_client()
    client.get("/")
    first = session_of(app, client)[SESSION_KEY]

    response = client.get("/")

    assert session_of(app, client)[SESSION_KEY] == first
    assert response.headers.getlist("Set-Cookie") == []  # nothing changed, nothing re-sent


def test_two_browsers_get_different_session_ids(app):
    one, two = app.test_client(), app.test_client()
    one.get("/")
    two.get("/")

    assert session_of(app, one)[SESSION_KEY] != session_of(app, two)[SESSION_KEY]


def test_session_cookie_is_http_only_and_same_site_lax(app):
    response = app.test_client().get("/")

    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header


# -- the endpoint --------------------------------------------------------------------------


def test_plain_get_of_the_stream_endpoint_is_a_400(app):
    # The rule is websocket=True: werkzeug answers a non-upgrade request with a
    # WebsocketMismatch, which is a 400 Bad Request; the view never runs.
    client = app.test_client()

    response = client.get("/turbo-stream")

    assert response.status_code == 400
    assert b"Bad Request" in response.data


def test_a_route_that_renders_no_stream_source_gets_no_session_cookie(app):
    @app.get("/api/count")
    def count():
        return {"count": 3}

    client = app.test_client()

    response = client.get("/api/count")

    assert response.json == {"count": 3}
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")
    assert client.get_cookie("session") is None
    # The first page with a stream source starts the session.
    client.get("/")
    assert client.get_cookie("session") is not None


def test_requests_that_match_no_route_get_no_session_cookie(app):
    client = app.test_client()

    assert client.get("/turbo-stream").status_code == 400
    assert client.get("/no-such-page").status_code == 404

    assert client.get_cookie("session") is None


def test_stream_endpoint_follows_turbo_websocket_route():
    app = create_app({**CONFIG, "TURBO_WEBSOCKET_ROUTE": "/push"})
    client = app.test_client()

    assert client.get("/push").status_code == 400
    assert client.get("/turbo-stream").status_code == 404


def test_sse_endpoint_without_a_session_cookie_is_refused_with_403(app):
    client = app.test_client()

    response = client.get("/turbo-stream/events")

    assert response.status_code == 403
    assert b"no session cookie" in response.data
    assert client.get_cookie("session") is None


@pytest.mark.parametrize("since", ["s~abc", "s1700-0", "s~1-0;drop"])
def test_sse_endpoint_with_a_malformed_since_is_refused_with_400(app, since):
    client = app.test_client()
    client.get("/")  # the session cookie

    response = client.get("/turbo-stream/events", query_string={"since": since})

    assert response.status_code == 400
    assert b"invalid since position" in response.data


def test_sse_endpoint_with_a_malformed_last_event_id_is_refused_with_400(app):
    client = app.test_client()
    client.get("/")

    response = client.get("/turbo-stream/events", headers={"Last-Event-ID": "s~1-0,b~oops"})

    assert response.status_code == 400


def test_sse_endpoint_follows_turbo_sse_route():
    app = create_app({**CONFIG, "TURBO_SSE_ROUTE": "/push/events"})
    client = ThreadedServerClient(app, app.response_class, use_cookies=True)

    assert client.get("/push/events").status_code == 403  # there, and wants a session
    assert client.get("/turbo-stream/events").status_code == 404


def test_a_stream_on_a_server_that_serves_one_request_at_a_time_is_refused(app, caplog):
    client = FlaskClient(app, app.response_class, use_cookies=True)  # multithread: false
    client.get("/")

    with caplog.at_level("ERROR", logger="turbocast"):
        response = client.get("/turbo-stream/events")

    assert response.status_code == STATUS_SERVER_CANNOT_HOLD
    assert any("one request at a time" in r.getMessage() for r in caplog.records)


def test_creating_the_app_and_serving_pages_starts_no_relay(app):
    before = relay_threads()
    client = app.test_client()

    client.get("/")
    client.get("/turbo-stream")

    assert relay_threads() == before == []


# -- the extension and its state -----------------------------------------------------------


def test_app_extensions_turbo_is_a_turbo_state(app):
    assert isinstance(app.extensions["turbo"], TurboState)


def test_init_app_fills_in_every_default_setting():
    app = Flask(__name__)
    app.config["TURBO_OUTBOX_BYTES"] = 7

    Turbo(app)

    for key, value in DEFAULTS.items():
        if key != "TURBO_OUTBOX_BYTES":
            assert app.config[key] == value
    assert app.config["TURBO_OUTBOX_BYTES"] == 7


def test_template_context_offers_turbo_stream_source(app):
    with app.test_request_context("/"):
        rendered = app.jinja_env.from_string("{{ turbo_stream_source('/s') }}").render(
            **_context(app)
        )

    assert rendered == '<turbo-stream-source src="ws://localhost/s"></turbo-stream-source>'


def test_template_context_offers_turbo_stream_url(app):
    with app.test_request_context("/"):
        rendered = app.jinja_env.from_string("{{ turbo_stream_url(transport='sse') }}").render(
            **_context(app)
        )

    assert rendered == "http://localhost/turbo-stream/events"


def test_the_library_default_transport_is_the_reconnecting_element():
    assert DEFAULTS["TURBO_TRANSPORT"] == "websocket"
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", REDIS_URL="redis://127.0.0.1:1/0")
    Turbo(app)
    with app.test_request_context("/"):
        rendered = app.jinja_env.from_string("{{ turbo_stream_source() }}").render(**_context(app))

    assert rendered.startswith('<script type="module" src="/_turbocast/turbocast.js?v=')
    assert '<turbocast-stream-source src="ws://localhost/turbo-stream">' in rendered


def _context(app: Flask) -> dict:
    context: dict = {}
    app.update_template_context(context)
    return context


def test_publisher_outside_an_app_context_is_a_clear_runtime_error():
    with pytest.raises(RuntimeError, match="application context"):
        _ = Turbo().publisher


def test_publisher_on_an_app_without_turbo_is_a_turbo_error():
    with Flask(__name__).app_context(), pytest.raises(TurboError, match="init_app"):
        _ = Turbo().publisher


def test_publisher_is_made_once_per_app_with_the_configured_prefix_and_limit():
    app = create_app({**CONFIG, "TURBO_CHANNEL_PREFIX": "shop", "TURBO_MAX_MESSAGE_BYTES": 99})
    state = app.extensions["turbo"]
    with app.app_context():
        publisher = Turbo().publisher
    try:
        assert isinstance(publisher, Publisher)  # made lazily: nothing connects yet
        assert state.publisher is publisher
        assert publisher.prefix == "shop"
        assert publisher.max_message_bytes == 99
    finally:
        publisher.close()


@pytest.mark.parametrize("url", [None, ""])
def test_redis_url_names_redis_url_when_unset(url):
    app = create_app({**CONFIG, "REDIS_URL": url, "TURBO_REDIS_URL": None})

    with pytest.raises(TurboError, match="REDIS_URL"):
        _ = app.extensions["turbo"].redis_url


def test_turbo_redis_url_wins_over_redis_url():
    app = create_app({**CONFIG, "TURBO_REDIS_URL": "redis://push.example:6390/2"})

    assert app.extensions["turbo"].redis_url == "redis://push.example:6390/2"


def test_redis_url_is_the_fallback():
    app = create_app({**CONFIG, "TURBO_REDIS_URL": None})

    assert app.extensions["turbo"].redis_url == CONFIG["REDIS_URL"]


def test_shutdown_without_a_relay_does_nothing(app):
    app.extensions["turbo"].shutdown()

    assert relay_threads() == []


def test_a_page_renders_without_any_redis_configured(caplog):
    app = create_app({"SECRET_KEY": "x", "REDIS_URL": None, "TESTING": True})
    response = app.test_client().get("/")
    assert response.status_code == 200
    assert b"-stream-source src=" in response.data
    assert "no stream positions for the page" in caplog.text
