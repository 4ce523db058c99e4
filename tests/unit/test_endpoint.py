"""turbocast.endpoint: the channels a client is admitted to, the ``since`` positions it
brings back, and SSE events."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from flask import Response, request, session

from app import create_app
from tests.unit.fake_pubsub import FakeHistory
from turbocast import STATUS_BAD_STREAM, stream_channel
from turbocast.channels import DEFAULT_PREFIX, history_key
from turbocast.endpoint import Admission, _admit, _replay, _sse_event, parse_positions
from turbocast.helpers import SESSION_KEY
from turbocast.message import Message
from turbocast.signing import StreamSigner


def test_parse_positions_reads_one_label_and_id_per_value():
    assert parse_positions(["s~1700-0", "b~1700-2"]) == {"s": "1700-0", "b": "1700-2"}


def test_parse_positions_reads_one_comma_separated_value_as_last_event_id_sends_it():
    assert parse_positions(["s~1-0,t:board:1~2-3"]) == {"s": "1-0", "t:board:1": "2-3"}


def test_parse_positions_of_nothing_is_empty():
    assert parse_positions([]) == {}


def test_parse_positions_skips_empty_parts():
    assert parse_positions(["", "s~1-0,"]) == {"s": "1-0"}


def test_parse_positions_keeps_the_last_of_two_positions_for_one_label():
    assert parse_positions(["s~1-0", "s~2-0"]) == {"s": "2-0"}


def test_parse_positions_reads_stream_labels_with_the_stream_name_characters():
    assert parse_positions(["t:org/7/inbox=a+b@c.d_e-f~1-0"]) == {
        "t:org/7/inbox=a+b@c.d_e-f": "1-0"
    }


@pytest.mark.parametrize(
    "values",
    [
        ["s~abc"],
        ["s1700-0"],
        ["s~1-0;drop"],
        ["s~1700"],
        ["~1-0"],
        ["s~-1-0"],
        ["s~1-0", "b~x"],
        ["s~1-0,b~"],
        ["s b~1-0"],
        ["s~" + "1" * 21 + "-0"],
        [f"s~{2**64}-0"],  # 20 digits, past what Redis holds in an id
        [f"s~1-{2**64}"],
    ],
)
def test_parse_positions_refuses_a_malformed_value(values):
    assert parse_positions(values) is None


def test_parse_positions_takes_the_largest_id_redis_holds():
    top = 2**64 - 1
    assert parse_positions([f"s~{top}-{top}"]) == {"s": f"{top}-{top}"}


# -- Server-Sent Events: one message as one event ------------------------------------------


def _parse_event(text: str) -> tuple[str | None, str]:
    # As EventSource does: CRLF, LF and a lone CR all end a line.
    event_id, data = None, []
    for line in re.split(r"\r\n|\r|\n", text):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
    return event_id, "\n".join(data)


def test_sse_event_id_is_the_position_in_every_channel_so_far():
    positions = {"s": "1-0"}

    event = _sse_event(Message(b"turbo:broadcast", "b", "7-2", b"<x>"), positions)

    assert event == "id: s~1-0,b~7-2\ndata: <x>\n\n"
    assert positions == {"s": "1-0", "b": "7-2"}
    assert parse_positions([_parse_event(event)[0] or ""]) == positions


def test_sse_event_of_a_message_without_an_id_keeps_the_positions():
    positions = {"s": "1-0"}

    event = _sse_event(Message(b"turbo:broadcast", "b", None, b"<x>"), positions)

    assert event.startswith("id: s~1-0\n")
    assert positions == {"s": "1-0"}


def test_sse_event_splits_multi_line_html_into_data_lines_the_browser_joins_again():
    html = "<template>\n  <p>é</p>\n</template>"

    event = _sse_event(Message(b"turbo:broadcast", "b", "1-0", html.encode()), {})

    assert event.count("data: ") == 3
    assert _parse_event(event) == ("b~1-0", html)


def test_sse_event_keeps_html_with_a_lone_carriage_return_intact():
    html = "<p>a\rb</p>"

    event = _sse_event(Message(b"turbo:broadcast", "b", "1-0", html.encode()), {})

    assert _parse_event(event)[1] in (html, "<p>a\nb</p>")


# -- the channels of an admitted socket ------------------------------------------------------

SID = "a" * 32


def _admit_with(query: list[tuple[str, str]]) -> Admission | Response:
    app = create_app({"SECRET_KEY": "x", "REDIS_URL": "redis://127.0.0.1:1/0", "TESTING": True})
    environ = {"wsgi.multithread": True}
    with app.test_request_context("/turbo-stream", query_string=query, environ_overrides=environ):
        session[SESSION_KEY] = SID
        return _admit(app.extensions["turbo"], request.args.getlist("since"))


def _signed(name: str) -> tuple[str, str]:
    return ("streams", StreamSigner("x").sign(name))


def test_a_socket_listens_to_its_session_everyone_and_its_named_streams():
    admission = _admit_with([_signed("board:1"), ("since", "t:board:1~5-0")])

    assert isinstance(admission, Admission)
    assert admission.channels == [
        f"turbo:session:{SID}",
        "turbo:broadcast",
        "turbo:stream:board:1",
    ]


def test_a_second_source_of_a_page_listens_to_its_named_streams_alone():
    admission = _admit_with([("only", "streams"), _signed("board:1"), ("since", "t:board:1~5-0")])

    assert isinstance(admission, Admission)
    assert admission.channels == ["turbo:stream:board:1"]
    assert admission.since == {"t:board:1": "5-0"}


def test_a_streams_only_source_without_a_stream_is_refused():
    refusal = _admit_with([("only", "streams")])

    assert isinstance(refusal, Response)
    assert refusal.status_code == STATUS_BAD_STREAM


# -- the replay -----------------------------------------------------------------------------


def test_the_replay_carries_each_entrys_publisher_time():
    sid = "r" * 32
    channel = stream_channel("board:1")
    entries = [("5-1", b"<a>", None, None, b"1700000000500000"), ("5-2", b"<b>")]
    history = FakeHistory({history_key(channel): (entries, False)})
    state = SimpleNamespace(
        config={"TURBO_CHANNEL_PREFIX": DEFAULT_PREFIX},
        publisher=SimpleNamespace(history=history),
    )
    admission = Admission(sid, [channel], {"t:board:1": "5-0"})

    replay = _replay(state, admission)  # type: ignore[arg-type]

    assert [(m.id, m.html, m.published) for m in replay] == [
        ("5-1", b"<a>", 1700000000.5),
        ("5-2", b"<b>", None),
    ]
