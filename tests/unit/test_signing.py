"""Signed stream names, user and stream channels, origins and the per-session socket cap."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from app import create_app
from turbocast import InvalidChannelError, StreamSigner, Turbo, stream_channel, user_channel
from turbocast.extension import TurboState
from turbocast.helpers import normalize_origin, site_origin, stream_url

CONFIG = {
    "SECRET_KEY": "s3cret",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "TESTING": True,
    "TURBO_TRANSPORT": "turbo",
}


def test_a_signed_name_round_trips():
    signer = StreamSigner("k")
    assert signer.unsign(signer.sign("board:42")) == "board:42"


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: StreamSigner("other").sign("board:42"),  # another secret
        lambda t: StreamSigner("k").sign("board:43").rsplit(".", 1)[0] + "." + t.rsplit(".")[1],
        lambda t: "board:42",  # no signature at all
        lambda t: "",
    ],
    ids=["tampered", "other-secret", "other-name", "unsigned", "empty"],
)
def test_forged_tokens_are_refused(forge):
    signer = StreamSigner("k")
    with pytest.raises(InvalidChannelError):
        signer.unsign(forge(signer.sign("board:42")))


def test_signing_refuses_bad_names_and_empty_secrets():
    with pytest.raises(InvalidChannelError):
        StreamSigner("k").sign("board 42")
    with pytest.raises(InvalidChannelError):
        StreamSigner("")


@pytest.mark.parametrize("user_id", ["ann", 42, "a.b@example.com", "x" * 128])
def test_user_channels(user_id):
    assert user_channel(user_id) == f"turbo:user:{user_id}"


@pytest.mark.parametrize("user_id", ["", "a b", "a:b", "a*", "x" * 129, None, True, 1.5])
def test_bad_user_ids_are_refused(user_id):
    with pytest.raises(InvalidChannelError):
        user_channel(user_id)


def test_stream_channels_are_namespaced():
    assert stream_channel("board:42", "app") == "app:stream:board:42"
    with pytest.raises(InvalidChannelError):
        stream_channel("board*")


def test_stream_url_carries_signed_names_the_endpoint_can_verify():
    app = create_app(CONFIG)
    with app.test_request_context("/"):
        url = stream_url(streams=["board:1", "board:2"])
    tokens = parse_qs(urlsplit(url).query)["streams"]
    signer = StreamSigner(CONFIG["SECRET_KEY"])
    assert [signer.unsign(t) for t in tokens] == ["board:1", "board:2"]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("https://Example.com:443", "https://example.com"),
        ("http://example.com:80/", "http://example.com"),
        ("http://example.com:8080", "http://example.com:8080"),
        ("null", "null"),
    ],
)
def test_origins_are_normalized(raw, normal):
    assert normalize_origin(raw) == normal


def test_site_origin_honours_trusted_proxies_only():
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example"}
    app = create_app(CONFIG)
    with app.test_request_context("/", headers=headers):
        assert site_origin() == "http://localhost"
    app = create_app({**CONFIG, "TURBO_TRUSTED_PROXIES": 1})
    with app.test_request_context("/", headers=headers):
        assert site_origin() == "https://app.example"


def test_socket_slots_are_capped_per_session_and_released():
    app = create_app({**CONFIG, "TURBO_MAX_SOCKETS_PER_SESSION": 2})
    state: TurboState = app.extensions["turbo"]
    with (
        state.socket_slot("a") as one,
        state.socket_slot("a") as two,
        state.socket_slot("a") as three,
        state.socket_slot("b") as other,
    ):
        assert (one, two, three, other) == (True, True, False, True)
    with state.socket_slot("a") as again:
        assert again
    assert state._sockets == {}


def test_the_user_loader_decorator_registers_and_returns_the_function():
    turbo = Turbo()
    assert turbo.load_user_id() is None  # no loader: nobody

    def loader() -> str:
        return "ann"

    assert turbo.user_loader(loader) is loader
    assert turbo.load_user_id() == "ann"
