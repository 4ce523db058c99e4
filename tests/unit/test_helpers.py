"""turbocast.helpers: the session id, the stream URL and the stream source element.

``REDIS_URL`` points at a port nothing listens on: the stream positions read from
Redis are then left out (with a warning), unless a test gives the app a fake history.
"""

from __future__ import annotations

import html as html_module
import logging
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import session
from markupsafe import Markup

from app import create_app
from tests.unit.fake_streams import FakeStreamsRedis
from turbocast.assets import digest
from turbocast.channels import valid_session_id
from turbocast.errors import TurboError
from turbocast.helpers import SESSION_KEY, session_id, socket_id, stream_url, turbo_stream_source
from turbocast.publisher import Publisher
from turbocast.signing import StreamSigner

# Turbo's own element, not the default (websocket): the tests of other transports name theirs.
CONFIG = {
    "SECRET_KEY": "x",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "TESTING": True,
    "TURBO_TRANSPORT": "turbo",
}


@pytest.fixture
def app():
    return create_app(CONFIG)


@pytest.fixture
def proxied_app():
    return create_app({**CONFIG, "TURBO_TRUSTED_PROXIES": 1})


def source(src: str) -> str:
    return f'<turbo-stream-source src="{src}"></turbo-stream-source>'


# -- session_id ----------------------------------------------------------------------------


def test_session_id_creates_a_32_character_id_and_stores_it(app):
    with app.test_request_context("/"):
        sid = session_id()

        assert len(sid) == 32
        assert valid_session_id(sid)
        assert session[SESSION_KEY] == sid


def test_session_id_returns_the_same_id_on_later_calls(app):
    with app.test_request_context("/"):
        first = session_id()
        session.modified = False

        assert session_id() == first
        assert not session.modified  # no new cookie for an id that is already there


def test_session_id_differs_between_sessions(app):
    with app.test_request_context("/"):
        first = session_id()
    with app.test_request_context("/"):
        second = session_id()

    assert first != second


@pytest.mark.parametrize("stored", ["short", 42, None, "a" * 31 + ":"])
def test_session_id_replaces_a_malformed_stored_id(app, stored):
    with app.test_request_context("/"):
        session[SESSION_KEY] = stored

        sid = session_id()

        assert sid != stored
        assert valid_session_id(sid)
        assert session[SESSION_KEY] == sid


# -- turbo_stream_source: scheme and host --------------------------------------------------


def test_source_uses_ws_and_the_registered_route_for_http(app):
    with app.test_request_context("/"):
        assert turbo_stream_source() == source("ws://localhost/turbo-stream")


def test_source_uses_wss_for_https(app):
    with app.test_request_context("/", base_url="https://example.com"):
        assert turbo_stream_source() == source("wss://example.com/turbo-stream")


def test_stream_url_default_is_one_absolute_url(app):
    with app.test_request_context("/"):
        assert stream_url() == "ws://localhost/turbo-stream"


def test_stream_url_follows_the_configured_transport(app):
    app.config["TURBO_TRANSPORT"] = "sse"
    with app.test_request_context("/"):
        assert stream_url() == "http://localhost/turbo-stream/events"
        assert stream_url(transport="turbo") == "ws://localhost/turbo-stream"


def test_default_path_goes_under_the_script_root(app):
    with app.test_request_context("/", base_url="http://localhost/mounted"):
        assert stream_url() == "ws://localhost/mounted/turbo-stream"


def test_default_path_follows_turbo_websocket_route():
    app = create_app({**CONFIG, "TURBO_WEBSOCKET_ROUTE": "/push/ws"})
    with app.test_request_context("/"):
        assert stream_url() == "ws://localhost/push/ws"


def test_default_path_with_forwarded_https_uses_wss_and_the_public_host(proxied_app):
    with proxied_app.test_request_context("/", headers=FORWARDED):
        assert turbo_stream_source() == source("wss://public.example/turbo-stream")


def test_source_with_an_explicit_path_uses_ws_for_http(app):
    with app.test_request_context("/"):
        html = turbo_stream_source("/turbo-stream")

    assert html == source("ws://localhost/turbo-stream")
    assert isinstance(html, Markup)


def test_source_with_an_explicit_path_uses_wss_for_https(app):
    with app.test_request_context("/", base_url="https://example.com"):
        assert turbo_stream_source("/turbo-stream") == source("wss://example.com/turbo-stream")


def test_source_keeps_a_non_default_port(app):
    with app.test_request_context("/", base_url="http://example.com:8080"):
        assert stream_url("/s") == "ws://example.com:8080/s"


def test_source_with_a_custom_path(app):
    with app.test_request_context("/"):
        assert turbo_stream_source("/custom/stream") == source("ws://localhost/custom/stream")


def test_custom_path_goes_under_the_script_root(app):
    with app.test_request_context("/", base_url="http://localhost/mounted"):
        assert stream_url("/custom") == "ws://localhost/mounted/custom"


@pytest.mark.parametrize("path", ["turbo-stream", "", "ws://evil.example/x"])
def test_path_without_leading_slash_is_refused(app, path):
    with app.test_request_context("/"), pytest.raises(TurboError, match="must start with '/'"):
        turbo_stream_source(path)


def test_rendering_the_source_gives_the_session_an_id(app):
    with app.test_request_context("/"):
        assert SESSION_KEY not in session

        turbo_stream_source("/turbo-stream")

        assert valid_session_id(session[SESSION_KEY])


# -- proxies -------------------------------------------------------------------------------

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example"}


def test_forwarded_headers_are_ignored_without_trusted_proxies(app):
    with app.test_request_context("/", headers=FORWARDED):
        assert stream_url("/turbo-stream") == "ws://localhost/turbo-stream"


def test_forwarded_headers_are_honoured_with_one_trusted_proxy(proxied_app):
    with proxied_app.test_request_context("/", headers=FORWARDED):
        assert stream_url("/turbo-stream") == "wss://public.example/turbo-stream"


def test_one_trusted_proxy_takes_the_rightmost_value(proxied_app):
    headers = {
        "X-Forwarded-Proto": "http, https",
        "X-Forwarded-Host": "spoofed.example, public.example",
    }
    with proxied_app.test_request_context("/", headers=headers):
        assert stream_url("/s") == "wss://public.example/s"


def test_two_trusted_proxies_take_the_second_value_from_the_right():
    app = create_app({**CONFIG, "TURBO_TRUSTED_PROXIES": 2})
    headers = {
        "X-Forwarded-Proto": "http, https, http",
        "X-Forwarded-Host": "spoofed.example, public.example, inner.local",
    }
    with app.test_request_context("/", headers=headers):
        assert stream_url("/s") == "wss://public.example/s"


def test_too_few_forwarded_values_fall_back_to_the_request():
    app = create_app({**CONFIG, "TURBO_TRUSTED_PROXIES": 2})
    with app.test_request_context("/", headers=FORWARDED):
        assert stream_url("/s") == "ws://localhost/s"


def test_forwarded_proto_is_case_insensitive(proxied_app):
    with proxied_app.test_request_context("/", headers={"X-Forwarded-Proto": "HTTPS"}):
        assert stream_url("/s") == "wss://localhost/s"


# -- hostile input -------------------------------------------------------------------------


def test_extra_attributes_are_escaped_and_underscores_become_dashes(app):
    with app.test_request_context("/"):
        html = turbo_stream_source("/s", id='x" onload="alert(1)', data_channel="<b>")

    assert html == (
        '<turbo-stream-source src="ws://localhost/s" id="x&#34; onload=&#34;alert(1)"'
        ' data-channel="&lt;b&gt;"></turbo-stream-source>'
    )


@pytest.mark.parametrize("name", ["on click", "1data", 'x"y', "a>b", "src"])
def test_bad_attribute_names_are_refused(app, name):
    with app.test_request_context("/"), pytest.raises(TurboError, match="bad attribute"):
        turbo_stream_source("/s", **{name: "v"})


@pytest.mark.parametrize("host", ['evil.example" onload="x', "evil.example/<script>", "a b"])
def test_hostile_host_header_is_refused(app, host):
    with (
        app.test_request_context("/", headers={"Host": host}),
        pytest.raises(TurboError, match="refusing to use the host"),
    ):
        turbo_stream_source("/s")


@pytest.mark.parametrize("host", ['evil.example" onload="x', "evil.example/<x>", "h'"])
def test_hostile_forwarded_host_is_refused(proxied_app, host):
    with (
        proxied_app.test_request_context("/", headers={"X-Forwarded-Host": host}),
        pytest.raises(TurboError, match="refusing to use the host"),
    ):
        stream_url("/s")


@pytest.mark.parametrize("host", ["example.com:8443", "[::1]:8080", "10.0.0.1"])
def test_well_formed_hosts_are_accepted(proxied_app, host):
    with proxied_app.test_request_context("/", headers={"X-Forwarded-Host": host}):
        assert stream_url("/s") == f"ws://{host}/s"


# -- transports ----------------------------------------------------------------------------


def test_turbo_transport_renders_turbos_own_element_on_a_websocket_url(app):
    with app.test_request_context("/"):
        html = turbo_stream_source(transport="turbo")

    assert html == source("ws://localhost/turbo-stream")


def test_websocket_transport_renders_the_script_and_the_reconnecting_element(app):
    with app.test_request_context("/"):
        html = turbo_stream_source(transport="websocket")

    assert html == (
        f'<script type="module" src="/_turbocast/turbocast.js?v={digest("turbocast.js")}"></script>'
        '<turbocast-stream-source src="ws://localhost/turbo-stream"></turbocast-stream-source>'
    )
    assert isinstance(html, Markup)


def test_websocket_transport_uses_wss_for_https(app):
    with app.test_request_context("/", base_url="https://example.com"):
        html = turbo_stream_source(transport="websocket")

    assert 'src="wss://example.com/turbo-stream"' in html


def test_websocket_transport_keeps_extra_attributes_on_the_element(app):
    with app.test_request_context("/"):
        html = turbo_stream_source(transport="websocket", id="live")

    assert '<turbocast-stream-source src="ws://localhost/turbo-stream" id="live">' in html


def test_websocket_transport_script_follows_turbo_assets_route_and_the_script_root():
    app = create_app({**CONFIG, "TURBO_ASSETS_ROUTE": "/static/push"})
    with app.test_request_context("/", base_url="http://localhost/mounted"):
        html = turbo_stream_source(transport="websocket")

    assert '<script type="module" src="/mounted/static/push/turbocast.js?v=' in html


def test_sse_transport_renders_turbos_element_on_the_http_events_url(app):
    with app.test_request_context("/"):
        html = turbo_stream_source(transport="sse")

    assert html == source("http://localhost/turbo-stream/events")


def test_sse_transport_uses_https_for_https(app):
    with app.test_request_context("/", base_url="https://example.com"):
        assert stream_url(transport="sse") == "https://example.com/turbo-stream/events"


def test_sse_transport_uses_https_behind_a_trusted_https_proxy(proxied_app):
    with proxied_app.test_request_context("/", headers=FORWARDED):
        assert stream_url(transport="sse") == "https://public.example/turbo-stream/events"


def test_sse_url_follows_turbo_sse_route():
    app = create_app({**CONFIG, "TURBO_SSE_ROUTE": "/push/events"})
    with app.test_request_context("/"):
        assert stream_url(transport="sse") == "http://localhost/push/events"


def test_sse_transport_with_an_explicit_path_keeps_it(app):
    with app.test_request_context("/"):
        assert stream_url("/custom/events", transport="sse") == "http://localhost/custom/events"


@pytest.mark.parametrize(
    ("transport", "start"),
    [
        ("turbo", "<turbo-stream-source "),
        ("websocket", "<script "),
        ("sse", '<turbo-stream-source src="http://'),
    ],
)
def test_turbo_transport_setting_picks_the_default_transport(transport, start):
    app = create_app({**CONFIG, "TURBO_TRANSPORT": transport})
    with app.test_request_context("/"):
        assert turbo_stream_source().startswith(start)


def test_an_explicit_transport_wins_over_the_setting():
    app = create_app({**CONFIG, "TURBO_TRANSPORT": "websocket"})
    with app.test_request_context("/"):
        assert turbo_stream_source(transport="turbo") == source("ws://localhost/turbo-stream")


@pytest.mark.parametrize("transport", ["carrier-pigeon", "WEBSOCKET", "ws"])
def test_an_unknown_transport_is_refused(app, transport):
    with app.test_request_context("/"), pytest.raises(TurboError, match="unknown transport"):
        turbo_stream_source(transport=transport)


def test_an_unknown_transport_is_refused_by_stream_url(app):
    with app.test_request_context("/"), pytest.raises(TurboError, match="unknown transport"):
        stream_url(transport="carrier-pigeon")


def test_an_unknown_transport_setting_is_refused_when_rendering():
    app = create_app({**CONFIG, "TURBO_TRANSPORT": "carrier-pigeon"})
    with app.test_request_context("/"), pytest.raises(TurboError, match="unknown transport"):
        turbo_stream_source()


# -- stream positions (since=) -------------------------------------------------------------


def _fake_history(app) -> FakeStreamsRedis:
    client = FakeStreamsRedis()
    app.extensions["turbo"]._publisher = Publisher(client=client)  # type: ignore[arg-type]
    return client


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_stream_url_carries_the_newest_history_id_of_each_channel_of_the_page(app):
    client = _fake_history(app)
    client.add("turbo:history:{turbo:broadcast}", "1700-0", "1700-2")
    client.add("turbo:history:{turbo:stream:board:1}", "1699-5")
    with app.test_request_context("/"):
        url = stream_url(streams=["board:1"])

    query = _query(url)
    # The session's history is empty: "0-0", so what comes before the connect is replayed.
    assert query["since"] == ["s~0-0", "b~1700-2", "t:board:1~1699-5"]
    assert StreamSigner(CONFIG["SECRET_KEY"]).unsign(query["streams"][0]) == "board:1"
    assert client.round_trips == 1


def test_stream_url_reads_the_session_history_of_this_session(app):
    client = _fake_history(app)
    with app.test_request_context("/"):
        sid = session_id()
        client.add(f"turbo:history:{{turbo:session:{sid}}}", "1800-1")

        url = stream_url()

    assert _query(url)["since"] == ["s~1800-1", "b~0-0"]


def test_stream_url_carries_the_users_position_when_the_loader_names_a_user(app, monkeypatch):
    client = _fake_history(app)
    client.add("turbo:history:{turbo:user:ann}", "1900-0")
    # The extension instance is shared by every app: patch its loader for this test only.
    monkeypatch.setattr(app.extensions["turbo"].turbo, "_user_loader", lambda: "ann")
    with app.test_request_context("/"):
        url = stream_url()

    assert _query(url)["since"] == ["s~0-0", "b~0-0", "u~1900-0"]


def test_sse_url_carries_the_positions_too(app):
    client = _fake_history(app)
    client.add("turbo:history:{turbo:broadcast}", "1700-2")
    with app.test_request_context("/"):
        url = stream_url(transport="sse")

    assert url.startswith("http://localhost/turbo-stream/events?")
    assert _query(url)["since"] == ["s~0-0", "b~1700-2"]


def test_stream_url_without_positions_reads_no_history(app):
    client = _fake_history(app)
    client.add("turbo:history:{turbo:broadcast}", "1700-2")
    with app.test_request_context("/"):
        url = stream_url(positions=False)

    assert url == "ws://localhost/turbo-stream"
    assert client.round_trips == 0


def test_the_rendered_element_carries_the_positions_escaped(app):
    client = _fake_history(app)
    client.add("turbo:history:{turbo:broadcast}", "1700-2")
    with app.test_request_context("/"):
        html = turbo_stream_source(streams=["board:1"])

    assert "&amp;since=b~1700-2" in html
    assert "&since" not in html.replace("&amp;", "")


def test_stream_url_without_a_reachable_redis_logs_a_warning_and_carries_no_positions(app, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="turbocast"),
        app.test_request_context("/"),
    ):
        url = stream_url()

    assert url == "ws://localhost/turbo-stream"
    warnings = [r for r in caplog.records if "no stream positions" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


# -- more than one stream source on a page -------------------------------------------------


def _src(html: str) -> str:
    match = re.search(r'src="(ws://[^"]+)"', html)
    assert match, html
    return html_module.unescape(match.group(1))


def test_a_second_source_listens_only_to_its_own_named_streams(app):
    client = _fake_history(app)
    client.add("turbo:history:{turbo:broadcast}", "1700-2")
    client.add("turbo:history:{turbo:stream:board:1}", "1699-5")
    with app.test_request_context("/"):
        layout = turbo_stream_source()
        page = turbo_stream_source(streams=["board:1"])

    assert _query(_src(layout))["since"] == ["s~0-0", "b~1700-2"]
    assert "only" not in _query(_src(layout))
    query = _query(_src(page))
    assert query["only"] == ["streams"]
    assert [StreamSigner("x").unsign(token) for token in query["streams"]] == ["board:1"]
    assert query["since"] == ["t:board:1~1699-5"]  # its own stream's position, nothing else


def test_a_later_source_leaves_out_the_streams_an_earlier_one_named(app):
    with app.test_request_context("/"):
        first = turbo_stream_source(streams=["board:1"])
        second = turbo_stream_source(streams=["board:1", "board:2", "board:2"])
        third = turbo_stream_source(streams=["board:2"])
        fourth = turbo_stream_source()

    signer = StreamSigner("x")
    assert [signer.unsign(t) for t in _query(_src(first))["streams"]] == ["board:1"]
    assert [signer.unsign(t) for t in _query(_src(second))["streams"]] == ["board:2"]
    assert third == fourth == ""  # nothing new to listen to: nothing rendered
    assert isinstance(third, Markup)


def test_each_request_starts_with_a_full_source(app):
    with app.test_request_context("/"):
        turbo_stream_source()
    with app.test_request_context("/"):
        html = turbo_stream_source(streams=["board:1"])

    assert "only" not in _query(_src(html))


def test_a_second_websocket_source_brings_the_same_script_url(app):
    with app.test_request_context("/"):
        first = turbo_stream_source(transport="websocket")
        second = turbo_stream_source(transport="websocket", streams=["board:1"])

    script = f'<script type="module" src="/_turbocast/turbocast.js?v={digest("turbocast.js")}">'
    assert first.startswith(script)
    assert second.startswith(script)
    assert "only=streams" in second


# -- socket_id -----------------------------------------------------------------------------


def test_socket_id_is_the_tabs_header_when_well_formed(app):
    with app.test_request_context("/", headers={"X-Turbocast-Socket": "Sock3tSock3tSock"}):
        assert socket_id() == "Sock3tSock3tSock"


@pytest.mark.parametrize("value", [None, "", "short", "has space in it!!!!!", "x" * 65])
def test_socket_id_is_none_without_the_header_or_with_a_malformed_one(app, value):
    headers = {} if value is None else {"X-Turbocast-Socket": value}
    with app.test_request_context("/", headers=headers):
        assert socket_id() is None
