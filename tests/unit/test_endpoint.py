"""turbocast.endpoint: the ``since`` positions a client brings back, and SSE events."""

from __future__ import annotations

import re

import pytest

from turbocast.endpoint import _sse_event, parse_positions
from turbocast.message import Message


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
