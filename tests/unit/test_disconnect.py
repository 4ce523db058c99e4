"""Sign-outs: the control payload, the relay closing matching outboxes, the publisher's checks."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import turbocast.relay as relay_module
from tests.unit.fake_pubsub import CHAT, NEWS, Factory, Waker
from turbocast import CLOSE_SIGNED_OUT, InvalidChannelError, Publisher
from turbocast.control import disconnect_payload, parse_order
from turbocast.outbox import Outbox
from turbocast.relay import Relay

SID = "a" * 32
OTHER_SID = "b" * 32
SOCKET = "s" * 16


def make_relay() -> Relay:
    return Relay("redis://unused.invalid/0", pubsub_factory=Factory(), waker=Waker())


class RecordingClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, channel: str, payload: bytes) -> int:
        self.published.append((channel, payload))
        return 2

    def register_script(self, script: str) -> object:
        return object()


def test_the_payload_names_the_kind_and_the_id_and_parses_back():
    assert disconnect_payload("session", SID) == f"disconnect session {SID}".encode()
    assert disconnect_payload("user", 42) == b"disconnect user 42"
    assert parse_order(disconnect_payload("session", SID)) == ("session", SID.encode())
    assert parse_order(b"disconnect user alice@example.com") == ("user", b"alice@example.com")


@pytest.mark.parametrize(
    "payload",
    [b"", b"disconnect", b"disconnect session short", b"disconnect group x", b"close user a",
     b"disconnect user a b", b"disconnect user \xff"],
)  # fmt: skip
def test_a_malformed_order_parses_to_none(payload: bytes):
    assert parse_order(payload) is None


@pytest.mark.parametrize(
    ("method", "value"),
    [("disconnect_session", "short"), ("disconnect_session", None),
     ("disconnect_session", "a" * 15 + "!"), ("disconnect_user", "has space"),
     ("disconnect_user", True), ("disconnect_user", ""), ("disconnect_user", 1.5)],
)  # fmt: skip
def test_bad_input_raises_before_anything_is_sent(method: str, value: Any):
    client = RecordingClient()
    publisher = Publisher(client=client, prefix="app")  # type: ignore[arg-type]
    with pytest.raises(InvalidChannelError):
        getattr(publisher, method)(value)
    assert client.published == []


def test_the_publisher_sends_the_order_on_the_control_channel():
    client = RecordingClient()
    publisher = Publisher(client=client, prefix="app")  # type: ignore[arg-type]
    assert publisher.disconnect_session(SID) == 2
    assert publisher.disconnect_user(7) == 2
    assert client.published == [
        ("app:control", f"disconnect session {SID}".encode()),
        ("app:control", b"disconnect user 7"),
    ]


def test_disconnect_closes_the_matching_outboxes_only_with_4003_and_logs_each(caplog):
    relay = make_relay()
    mine, mine_too, other, anonymous = (Outbox(1 << 20) for _ in range(4))
    relay.attach([CHAT], mine, SID, SOCKET, "alice")
    relay.attach([NEWS], mine_too, OTHER_SID, None, "alice")
    relay.attach([CHAT], other, "c" * 32, None, "bob")
    relay.attach([CHAT], anonymous, "d" * 32)

    with caplog.at_level(logging.INFO, logger="turbocast.relay"):
        assert relay.disconnect("user", b"alice") == 2

    for outbox in (mine, mine_too):
        assert outbox.closing is not None
        assert outbox.closing.code == CLOSE_SIGNED_OUT
    assert other.closing is None and anonymous.closing is None
    assert [r.getMessage() for r in caplog.records].count("socket signed out") == 2

    assert relay.disconnect("session", ("c" * 32).encode()) == 1
    assert other.closing is not None and anonymous.closing is None


def test_a_detached_socket_is_forgotten():
    relay = make_relay()
    outbox = Outbox(1 << 20)
    relay.detach(relay.attach([CHAT], outbox, SID, None, "alice"))
    assert relay.disconnect("user", b"alice") == 0
    assert relay.disconnect("session", SID.encode()) == 0


def test_signed_out_tells_a_socket_admitted_meanwhile(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(relay_module.time, "monotonic", lambda: now[0])
    relay = make_relay()
    assert not relay.signed_out(SID, "alice", since=999.0)

    relay.disconnect("user", b"alice")
    relay.disconnect("session", SID.encode())
    assert relay.signed_out(SID, None, since=999.0)
    assert relay.signed_out(OTHER_SID, "alice", since=999.0)
    assert not relay.signed_out(OTHER_SID, "bob", since=999.0)

    # Long after: a user may sign in again; a rotated session id never comes back.
    now[0] += relay_module.USER_ORDER_SECONDS + 1
    assert not relay.signed_out(OTHER_SID, "alice", since=now[0])
    assert relay.signed_out(SID, None, since=now[0])
    # ... unless the order came after the admission began.
    assert relay.signed_out(OTHER_SID, "alice", since=999.0)
    now[0] += relay_module.SESSION_ORDER_SECONDS
    assert not relay.signed_out(SID, None, since=now[0])


def test_rotate_session_id_gives_a_new_id():
    from flask import Flask

    from turbocast import rotate_session_id, session_id

    app = Flask(__name__)
    app.secret_key = "test"
    with app.test_request_context():
        old = session_id()
        new = rotate_session_id()
        assert new != old and session_id() == new
