"""app.turbo.history: stream ids, and reading channel histories (against an in-memory fake)."""

from __future__ import annotations

import pytest

from app.turbo.history import START, History, format_id, parse_id
from tests.unit.fake_streams import FakeStreamsRedis, payload_of

KEY = "turbo:history:broadcast"
OTHER = "turbo:history:session:abcdefghijklmnop"


@pytest.fixture
def client() -> FakeStreamsRedis:
    return FakeStreamsRedis()


@pytest.fixture
def history(client: FakeStreamsRedis) -> History:
    return History(client)  # type: ignore[arg-type]


# -- parse_id and format_id ----------------------------------------------------------------


@pytest.mark.parametrize("text", ["0-0", "1700000000000-0", "1700000000000-17", "1-2"])
def test_format_id_of_parse_id_gives_back_the_id(text):
    assert format_id(parse_id(text)) == text


def test_parse_id_reads_the_bytes_redis_returns():
    assert parse_id(b"1700000000000-3") == (1700000000000, 3)


def test_parse_id_without_a_sequence_means_sequence_zero():
    assert parse_id("1700") == (1700, 0)


def test_parsed_ids_order_numerically_not_as_text():
    ids = ["1701-0", "1700-10", "1700-2"]

    assert sorted(ids, key=parse_id) == ["1700-2", "1700-10", "1701-0"]
    assert parse_id("1700-2") < parse_id("1700-10") < parse_id("1701-0")
    assert parse_id("999-0") < parse_id("1000-0")


@pytest.mark.parametrize("text", ["abc", "", "-", "12-x", "x-1"])
def test_parse_id_refuses_what_is_not_a_stream_id(text):
    with pytest.raises(ValueError):
        parse_id(text)


# -- History: construction and publish ------------------------------------------------------


@pytest.mark.parametrize(("maxlen", "max_age"), [(0, 60.0), (-1, 60.0), (10, 0.0), (10, -5.0)])
def test_history_refuses_a_length_below_one_or_an_age_not_above_zero(client, maxlen, max_age):
    with pytest.raises(ValueError, match="maxlen"):
        History(client, maxlen=maxlen, max_age=max_age)  # type: ignore[arg-type]


def test_publish_runs_the_script_once_with_key_payload_limits_and_channel(client):
    history = History(client, maxlen=50, max_age=2.5)  # type: ignore[arg-type]
    client.script_result = [b"1700000000000-4", 3]

    result = history.publish(KEY, "turbo:broadcast", b"<turbo-stream></turbo-stream>")

    assert result == ("1700000000000-4", 3)
    assert client.script_calls == [
        ([KEY], [b"<turbo-stream></turbo-stream>", 50, 2500, "turbo:broadcast"])
    ]
    assert "XADD" in client.scripts[0] and "PUBLISH" in client.scripts[0]


# -- History.positions ---------------------------------------------------------------------


def test_positions_are_start_for_empty_histories_and_the_newest_id_otherwise(client, history):
    client.add(KEY, "1700-0", "1700-2", "1701-0")

    assert history.positions([OTHER, KEY]) == [START, "1701-0"]


def test_positions_of_many_histories_take_one_round_trip(client, history):
    client.add(KEY, "1-0")
    client.add(OTHER, "2-0")

    history.positions([KEY, OTHER, "turbo:history:user:ann"])

    assert client.round_trips == 1


def test_positions_of_no_histories_is_an_empty_list(history):
    assert history.positions([]) == []


# -- History.since -------------------------------------------------------------------------


def test_since_returns_the_entries_after_the_position_oldest_first(client, history):
    client.add(KEY, "1700-0", "1700-2", "1700-10", "1701-0")

    entries, gap = history.since(KEY, "1700-2")

    assert entries == [("1700-10", payload_of("1700-10")), ("1701-0", payload_of("1701-0"))]
    assert gap is False


def test_since_the_newest_id_returns_nothing_and_no_gap(client, history):
    client.add(KEY, "1700-0", "1701-0")

    assert history.since(KEY, "1701-0") == ([], False)


def test_since_start_returns_the_whole_history_and_is_never_a_gap(client, history):
    client.add(KEY, "1700-5", "1701-0")  # older entries were trimmed: the reader had none

    entries, gap = history.since(KEY, START)

    assert [i for i, _ in entries] == ["1700-5", "1701-0"]
    assert gap is False


def test_since_start_on_an_empty_history_is_nothing_and_no_gap(history):
    assert history.since(KEY, START) == ([], False)


def test_since_a_trimmed_position_reports_a_gap_with_what_is_left(client, history):
    client.add(KEY, "1700-5", "1701-0")  # "1700-1" was trimmed away

    entries, gap = history.since(KEY, "1700-1")

    assert [i for i, _ in entries] == ["1700-5", "1701-0"]
    assert gap is True


def test_since_a_position_in_an_emptied_history_is_a_gap(history):
    # Expired, or a Redis that lost its data: the reader's last message is not there.
    assert history.since(KEY, "1700-1") == ([], True)


def test_since_normalizes_a_position_without_a_sequence(client, history):
    client.add(KEY, "1700-0", "1700-1")

    entries, gap = history.since(KEY, "1700")

    assert [i for i, _ in entries] == ["1700-1"]
    assert gap is False


def test_since_takes_one_round_trip(client, history):
    client.add(KEY, "1700-0", "1700-1")

    history.since(KEY, "1700-0")

    assert client.round_trips == 1


def test_since_reads_only_its_own_channel(client, history):
    client.add(KEY, "1700-0")
    client.add(OTHER, "1700-1", "1700-2")

    assert history.since(KEY, START) == ([("1700-0", payload_of("1700-0"))], False)
