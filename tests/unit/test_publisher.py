"""turbocast.publisher: one PUBLISH per message, one retry, and clear failures."""

from __future__ import annotations

import logging
import math
import time

import pytest
import redis
from markupsafe import Markup

from turbocast.errors import (
    InvalidChannelError,
    InvalidStreamError,
    MessageTooLargeError,
    PublishError,
)
from turbocast.publisher import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, Publisher
from turbocast.streams import TurboStream

SID = "abcdefghijklmnopqrstuvwxyzABCDEF"


class FakeClient:
    """Stands in for ``redis.Redis``: records publishes; answers from a script."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.published: list[tuple[str, bytes]] = []
        self.history_keys: list[str] = []
        self.calls: list[tuple[list[str], list[object]]] = []
        self.closed = False

    def register_script(self, script: str):
        # The publish script: KEYS=[history key, clock key],
        # ARGV=[payload, maxlen, max age ms, channel, token, retry-from ms or "", excluded
        # session, excluded socket, publish time in µs].
        self.script = script
        return self._run

    def _run(self, keys: list[str], args: list[object]) -> list[object]:
        channel, payload = str(args[3]), args[0]
        self.published.append((channel, payload))  # type: ignore[arg-type]
        self.history_keys.append(keys[0])
        self.calls.append((keys, args))
        outcome = self.outcomes.pop(0) if self.outcomes else 1
        if isinstance(outcome, BaseException):
            raise outcome
        return [b"1-0", outcome]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def publisher(client: FakeClient) -> Publisher:
    return Publisher(client=client)  # type: ignore[arg-type]


def stream(text: str = "hi") -> TurboStream:
    return TurboStream.append("messages", Markup(f"<li>{text}</li>"))


# -- where and what ------------------------------------------------------------------------


def test_to_session_publishes_one_message_on_the_session_channel(publisher, client):
    s = stream()

    count = publisher.to_session(SID, s)

    assert count == 1
    assert client.published == [(f"turbo:session:{SID}", s.render().encode("utf-8"))]


def test_to_session_returns_how_many_processes_received_it():
    publisher = Publisher(client=FakeClient(3))  # type: ignore[arg-type]

    assert publisher.to_session(SID, stream()) == 3


def test_to_session_refuses_a_malformed_session_id_without_publishing(publisher, client):
    with pytest.raises(ValueError):
        publisher.to_session("not-a-session", stream())

    assert client.published == []


def test_to_all_publishes_on_the_broadcast_channel(publisher, client):
    s = stream()

    publisher.to_all(s)

    assert client.published == [("turbo:broadcast", s.render().encode("utf-8"))]


def test_several_streams_are_concatenated_into_one_publish(publisher, client):
    first, second = stream("one"), TurboStream.remove("card_7")

    publisher.to_session(SID, first, second)

    assert len(client.published) == 1
    payload = client.published[0][1]
    assert payload == (first.render() + second.render()).encode("utf-8")
    assert payload.count(b"<turbo-stream ") == 2


def test_payload_is_utf8(publisher, client):
    publisher.to_all(stream("héllo ✓"))

    assert "héllo ✓".encode() in client.published[0][1]


def test_markup_streams_are_sent_as_they_are(publisher, client):
    html = Markup('<turbo-stream action="remove" target="x"></turbo-stream>')

    publisher.to_all(html)

    assert client.published == [("turbo:broadcast", str(html).encode())]


def test_custom_prefix_names_both_channels(client):
    publisher = Publisher(client=client, prefix="shop")  # type: ignore[arg-type]

    publisher.to_session(SID, stream())
    publisher.to_all(stream())

    assert [channel for channel, _ in client.published] == [
        f"shop:session:{SID}",
        "shop:broadcast",
    ]


def test_publish_sends_on_the_given_channel(publisher, client):
    publisher.publish("turbo:custom", stream())

    assert client.published[0][0] == "turbo:custom"


# -- refusals ------------------------------------------------------------------------------


def test_message_over_the_limit_is_refused_naming_the_limit(client):
    s = stream("x" * 100)
    size = len(s.render().encode())
    publisher = Publisher(client=client, max_message_bytes=size - 1)  # type: ignore[arg-type]

    expected = rf"{size} bytes exceeds the limit of {size - 1} bytes"
    with pytest.raises(MessageTooLargeError, match=expected):
        publisher.to_all(s)

    assert client.published == []


def test_message_exactly_at_the_limit_is_sent(client):
    s = stream("x" * 100)
    size = len(s.render().encode())
    publisher = Publisher(client=client, max_message_bytes=size)  # type: ignore[arg-type]

    publisher.to_all(s)

    assert len(client.published) == 1


def test_message_too_large_error_is_a_publish_error_and_a_value_error(client):
    publisher = Publisher(client=client, max_message_bytes=1)  # type: ignore[arg-type]

    with pytest.raises(MessageTooLargeError) as info:
        publisher.to_all(stream())

    assert isinstance(info.value, PublishError)
    assert isinstance(info.value, ValueError)
    assert "TURBO_MAX_MESSAGE_BYTES" in str(info.value)


def test_default_limit_is_one_mebibyte(publisher):
    assert publisher.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 1024 * 1024


def test_plain_str_stream_is_refused(publisher, client):
    with pytest.raises(InvalidStreamError, match="Markup"):
        publisher.to_all('<turbo-stream action="remove" target="x"></turbo-stream>')

    assert client.published == []


# -- failures and the one retry ------------------------------------------------------------


@pytest.mark.parametrize("error", [redis.ConnectionError("reset"), redis.TimeoutError("timed out")])
def test_a_dropped_connection_is_retried_once(error, caplog):
    client = FakeClient(error, 2)
    publisher = Publisher(client=client)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="turbocast.publisher"):
        count = publisher.to_session(SID, stream())

    assert count == 2
    assert len(client.published) == 2
    assert client.published[0] == client.published[1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "retrying once" in warnings[0].getMessage()
    assert warnings[0].turbo_channel == f"turbo:session:{SID}"


def test_the_retry_carries_the_first_attempts_token_and_only_it_looks_for_it():
    client = FakeClient(redis.ConnectionError("reply lost"), 1)
    publisher = Publisher(client=client)  # type: ignore[arg-type]
    before_ms = int(time.time() * 1000)

    publisher.to_all(stream())

    (_, first), (_, retry) = client.calls
    assert first[5] == ""  # the first attempt pays for no lookup
    assert isinstance(first[4], bytes) and len(first[4]) == 16
    assert retry[4] == first[4]  # the same publish: the same token
    # It looks from a few seconds before the first attempt began (Redis's clock may lag).
    assert before_ms - 60_000 < int(retry[5]) <= before_ms


def test_the_retry_carries_the_first_attempts_time_which_is_the_publishers_own():
    client = FakeClient(redis.ConnectionError("reply lost"), 1)
    publisher = Publisher(client=client)  # type: ignore[arg-type]
    before = time.time()

    publisher.to_all(stream())
    after = time.time()

    (_, first), (_, retry) = client.calls
    published_us = first[8]  # ARGV[9]: the publisher's time, µs since the epoch
    assert isinstance(published_us, int)
    assert math.floor(before * 1_000_000) <= published_us <= after * 1_000_000
    assert retry[8] == published_us  # the same publish: the first attempt's time


def test_each_publish_has_its_own_token(publisher, client):
    publisher.to_all(stream())
    publisher.to_all(stream())

    assert client.calls[0][1][4] != client.calls[1][1][4]


def test_the_clock_key_is_named_by_the_prefix(client):
    Publisher(client=client, prefix="shop").to_all(stream())  # type: ignore[arg-type]

    assert client.calls[0][0] == ["shop:history:{shop:broadcast}", "shop:clock"]


def test_two_dropped_connections_raise_publish_error_chained_to_the_last(caplog):
    last = redis.ConnectionError("still down")
    client = FakeClient(redis.ConnectionError("down"), last)
    publisher = Publisher(client=client)  # type: ignore[arg-type]

    with (
        caplog.at_level(logging.WARNING, logger="turbocast.publisher"),
        pytest.raises(PublishError, match="turbo:broadcast") as info,
    ):
        publisher.to_all(stream())

    assert info.value.__cause__ is last
    assert not isinstance(info.value, MessageTooLargeError)
    assert len(client.published) == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "publish failed" in errors[0].getMessage()


def test_a_response_error_is_not_retried(caplog):
    refused = redis.ResponseError("NOPERM this user has no permissions")
    client = FakeClient(refused)
    publisher = Publisher(client=client)  # type: ignore[arg-type]

    with (
        caplog.at_level(logging.WARNING, logger="turbocast.publisher"),
        pytest.raises(PublishError, match="NOPERM") as info,
    ):
        publisher.to_all(stream())

    assert info.value.__cause__ is refused
    assert len(client.published) == 1
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


class _FromUrl:
    """Records what a publisher asks ``redis.Redis.from_url`` for."""

    def __init__(self) -> None:
        self.kwargs: dict[str, object] = {}

    def __call__(self, url: str, **kwargs: object) -> FakeClient:
        self.kwargs = kwargs
        return FakeClient()


def test_the_timeout_bounds_connecting_and_every_reply(monkeypatch):
    from_url = _FromUrl()
    monkeypatch.setattr(redis.Redis, "from_url", from_url)

    Publisher("redis://example.invalid:1/0", timeout=0.5)

    assert from_url.kwargs["socket_timeout"] == 0.5
    assert from_url.kwargs["socket_connect_timeout"] == 0.5
    # One retry is the publisher's own: redis-py must not add its own on top.
    assert from_url.kwargs["retry"].get_retries() == 0


def test_the_default_timeout_is_five_seconds(monkeypatch):
    from_url = _FromUrl()
    monkeypatch.setattr(redis.Redis, "from_url", from_url)

    Publisher("redis://example.invalid:1/0")

    assert DEFAULT_TIMEOUT == 5.0
    assert from_url.kwargs["socket_timeout"] == from_url.kwargs["socket_connect_timeout"] == 5.0


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_not_above_zero_is_refused(timeout):
    with pytest.raises(ValueError, match="timeout"):
        Publisher("redis://example.invalid:1/0", timeout=timeout)


def test_publisher_without_url_or_client_is_refused():
    with pytest.raises(PublishError, match="redis_url or client"):
        Publisher()


def test_publisher_with_an_empty_url_is_refused():
    with pytest.raises(PublishError):
        Publisher("")


def test_close_closes_the_client(publisher, client):
    publisher.close()

    assert client.closed


def test_to_user_and_to_stream_publish_on_their_channels(publisher, client):
    publisher.to_user("ann", TurboStream.remove("x"))
    publisher.to_stream("board:1", TurboStream.remove("x"))
    assert [c for c, _ in client.published] == ["turbo:user:ann", "turbo:stream:board:1"]


def test_each_message_goes_to_its_channel_history_in_the_same_call(publisher, client):
    publisher.to_session("A" * 32, TurboStream.remove("x"))
    publisher.to_all(TurboStream.remove("x"))
    assert client.history_keys == [
        "turbo:history:{turbo:session:" + "A" * 32 + "}",
        "turbo:history:{turbo:broadcast}",
    ]
    assert "XADD" in client.script and "PUBLISH" in client.script


# -- exclude= ------------------------------------------------------------------------------

OTHER_SID = "ZYXWVUTSRQPONMLKJIHGFEDCBA012345"


@pytest.mark.parametrize("call", ["to_session", "to_user", "to_stream", "to_all", "publish"])
def test_every_push_takes_exclude_and_hands_it_to_the_script(publisher, client, call):
    audience = {
        "to_session": (SID,),
        "to_user": (42,),
        "to_stream": ("board:1",),
        "to_all": (),
        "publish": ("turbo:broadcast",),
    }[call]

    getattr(publisher, call)(*audience, stream(), exclude=OTHER_SID)

    [(_, args)] = client.calls
    assert args[6] == OTHER_SID  # ARGV[7]: the session the script writes into the head


def test_without_exclude_the_script_excludes_nobody(publisher, client):
    publisher.to_all(stream())

    [(_, args)] = client.calls
    assert args[6] == ""


@pytest.mark.parametrize(
    "bad", ["", "short", "has space in it!!!!!", "x" * 129, 1234567890123456789, b"a" * 20]
)
def test_a_malformed_exclude_is_refused_before_anything_is_sent(publisher, client, bad):
    with pytest.raises(InvalidChannelError, match="exclude=.* is not a session id"):
        publisher.to_all(stream(), exclude=bad)

    assert client.calls == []


# -- batches -------------------------------------------------------------------------------


def test_a_batch_checks_each_message_when_it_is_added_and_sends_nothing_on_a_bad_one(
    publisher, client
):
    # (FakeClient has no pipeline: sending anything here would fail the test.)
    with pytest.raises(InvalidChannelError), publisher.batch() as batch:
        batch.to_session(SID, stream())
        batch.to_stream("board:1", stream(), exclude=OTHER_SID)
        batch.to_session("not-a-session", stream())

    assert len(batch) == 2
    assert batch.receivers is None
    assert client.calls == []


@pytest.mark.parametrize(
    ("add", "error"),
    [
        (lambda b: b.to_all(Markup("x" * 70)), MessageTooLargeError),
        (lambda b: b.publish("other:broadcast", stream()), InvalidChannelError),
        (lambda b: b.to_user("no spaces allowed", stream()), InvalidChannelError),
        (lambda b: b.to_all(stream(), exclude="nope"), InvalidChannelError),
    ],
)
def test_a_batch_refuses_a_bad_message_at_once(client, add, error):
    publisher = Publisher(client=client, max_message_bytes=64)  # type: ignore[arg-type]
    batch = publisher.batch()

    with pytest.raises(error):
        add(batch)

    assert len(batch) == 0


def test_an_exception_inside_the_block_sends_nothing(publisher, client):
    with pytest.raises(RuntimeError), publisher.batch() as batch:
        batch.to_all(stream())
        raise RuntimeError("the view failed")

    assert batch.receivers is None
    assert client.calls == []


def test_an_empty_batch_sends_nothing_and_a_sent_batch_takes_no_more(publisher, client):
    with publisher.batch() as batch:
        pass

    assert batch.receivers == []
    with pytest.raises(PublishError, match="sent already"):
        batch.to_all(stream())
    with pytest.raises(PublishError, match="sent already"):
        batch.send()
    assert client.calls == []


# -- exclude_socket= -----------------------------------------------------------------------

SOCKET = "Sock3tSock3tSock"


@pytest.mark.parametrize("call", ["to_session", "to_user", "to_stream", "to_all", "publish"])
def test_every_push_takes_exclude_socket_and_hands_it_to_the_script(publisher, client, call):
    audience = {
        "to_session": (SID,),
        "to_user": (42,),
        "to_stream": ("board:1",),
        "to_all": (),
        "publish": ("turbo:broadcast",),
    }[call]

    getattr(publisher, call)(*audience, stream(), exclude_socket=SOCKET)

    [(_, args)] = client.calls
    assert (args[6], args[7]) == ("", SOCKET)  # ARGV[8]: the socket the script writes down


@pytest.mark.parametrize(
    "bad", ["", "short", "has space in it!!!!!", "x" * 65, 1234567890123456789, b"a" * 20]
)
def test_a_malformed_exclude_socket_is_refused_before_anything_is_sent(publisher, client, bad):
    with pytest.raises(InvalidChannelError, match="exclude_socket=.* is not a socket id"):
        publisher.to_all(stream(), exclude_socket=bad)
    with pytest.raises(InvalidChannelError), publisher.batch() as batch:
        batch.to_stream("board:1", stream(), exclude_socket=bad)

    assert client.calls == []
