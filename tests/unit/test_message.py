"""turbocast.message: one message's two wire formats, and a socket's cursor."""

from __future__ import annotations

import pytest

from turbocast.message import (
    REFRESH_HTML,
    SUBPROTOCOL,
    Cursor,
    Message,
    identity_frame,
    published_seconds,
)
from turbocast.outbox import encode_text_frame

NEWS = b"turbo:broadcast"
CHAT = b"turbo:session:abcdefghijklmnop"
HTML = b'<turbo-stream action="remove" target="x"></turbo-stream>'


def message(channel: bytes = NEWS, message_id: str | None = "1700-0", label: str = "b") -> Message:
    return Message(channel, label, message_id, HTML)


# -- from_payload --------------------------------------------------------------------------


def test_from_payload_splits_the_id_from_the_html():
    m = Message.from_payload(NEWS, "b", b"1700000000000-3 " + HTML)

    assert m.id == "1700000000000-3"
    assert m.key == (1700000000000, 3)
    assert m.html == HTML
    assert (m.channel, m.label, m.gap) == (NEWS, "b", False)


def test_from_payload_keeps_spaces_inside_the_html():
    m = Message.from_payload(NEWS, "b", b"1-0 <p>a b  c</p>")

    assert m.html == b"<p>a b  c</p>"


@pytest.mark.parametrize(
    "payload",
    [
        HTML,
        b'<turbo-stream action="append" target="a b"></turbo-stream>',
        b"x-1 <p>not an id</p>",
        b"12-ab <p>not an id</p>",
        b"1700-0",  # an id-looking text with nothing after it
        b"",
    ],
)
def test_from_payload_without_an_id_keeps_the_whole_payload_as_html(payload):
    m = Message.from_payload(NEWS, "b", payload)

    assert m.id is None
    assert m.key is None
    assert m.html == payload


# -- frames --------------------------------------------------------------------------------


def test_plain_frame_is_the_bare_html():
    assert message().plain_frame == encode_text_frame(HTML)


def test_tagged_frame_starts_with_a_line_of_kind_label_and_id():
    m = Message(CHAT, "s", "1700-2", HTML)

    assert m.tagged_frame == encode_text_frame(b"m s 1700-2\n" + HTML)


def test_tagged_frame_of_a_gap_starts_with_g():
    m = Message(NEWS, "b", "1700-9", REFRESH_HTML, gap=True)

    assert m.tagged_frame == encode_text_frame(b"g b 1700-9\n" + REFRESH_HTML)


def test_tagged_frame_without_an_id_says_dash():
    m = Message(NEWS, "t:board:1", None, HTML)

    assert m.tagged_frame == encode_text_frame(b"m t:board:1 -\n" + HTML)


def test_frames_are_encoded_once_and_the_same_bytes_object_is_returned_again():
    m = message()

    assert m.plain_frame is m.plain_frame
    assert m.tagged_frame is m.tagged_frame
    assert m.plain_frame != m.tagged_frame


def test_refresh_html_is_a_turbo_refresh_stream():
    assert REFRESH_HTML == b'<turbo-stream action="refresh"></turbo-stream>'
    assert SUBPROTOCOL == "turbocast.v1"


# -- Cursor --------------------------------------------------------------------------------


def test_cursor_admits_the_first_message_of_a_channel():
    assert Cursor().admit(message(message_id="1700-0")) is True


def test_cursor_refuses_the_same_id_twice():
    cursor = Cursor()
    cursor.admit(message(message_id="1700-3"))

    assert cursor.admit(message(message_id="1700-3")) is False


def test_cursor_refuses_an_older_id_and_keeps_its_mark():
    cursor = Cursor()
    cursor.admit(message(message_id="1700-10"))

    assert cursor.admit(message(message_id="1700-2")) is False
    assert cursor.admit(message(message_id="1699-99")) is False
    assert cursor.marks[NEWS] == (1700, 10)


def test_cursor_admits_a_newer_id_and_advances():
    cursor = Cursor()
    cursor.admit(message(message_id="1700-2"))

    assert cursor.admit(message(message_id="1700-10")) is True
    assert cursor.admit(message(message_id="1701-0")) is True
    assert cursor.marks[NEWS] == (1701, 0)


def test_cursor_keeps_each_channel_apart():
    cursor = Cursor()
    cursor.admit(message(NEWS, "1700-5"))

    assert cursor.admit(message(CHAT, "1700-1", label="s")) is True
    assert cursor.admit(message(NEWS, "1700-4")) is False
    assert cursor.admit(message(CHAT, "1700-1", label="s")) is False


def test_cursor_always_admits_messages_without_an_id_and_they_do_not_move_it():
    cursor = Cursor()
    cursor.admit(message(message_id="1700-5"))

    assert cursor.admit(message(message_id=None)) is True
    assert cursor.admit(message(message_id=None)) is True
    assert cursor.marks == {NEWS: (1700, 5)}


# -- exclusion -----------------------------------------------------------------------------

OTHER = b"Zyxwvutsrqponmlkjihg"


def test_from_payload_reads_the_session_a_message_excludes():
    m = Message.from_payload(NEWS, "b", b"1700000000000-3;x=" + OTHER + b" " + HTML)

    assert (m.id, m.key, m.exclude, m.html) == ("1700000000000-3", (1700000000000, 3), OTHER, HTML)


def test_from_payload_of_the_old_format_excludes_nobody():
    m = Message.from_payload(NEWS, "b", b"1700000000000-3 " + HTML)

    assert (m.id, m.exclude, m.html) == ("1700000000000-3", None, HTML)


@pytest.mark.parametrize(
    "payload",
    [
        b"1700-0;x= <p>no session after the mark</p>",
        b"1700-0;y=abc <p>another mark</p>",
        b"1700-x;x=abcdefghijklmnop <p>not an id</p>",
    ],
)
def test_from_payload_with_a_malformed_head_keeps_the_whole_payload_as_html(payload):
    m = Message.from_payload(NEWS, "b", payload)

    assert (m.id, m.exclude, m.html) == (None, None, payload)


def test_an_excluding_message_looks_the_same_on_the_wire():
    m = Message.from_payload(NEWS, "b", b"1700-0;x=" + OTHER + b" " + HTML)

    assert m.plain_frame == encode_text_frame(HTML)
    assert m.tagged_frame == encode_text_frame(b"m b 1700-0\n" + HTML)


# -- exclude_socket ------------------------------------------------------------------------

SOCKET = b"Sock3tSock3tSock"


def test_from_payload_reads_the_socket_a_message_excludes():
    m = Message.from_payload(NEWS, "b", b"1700-3;s=" + SOCKET + b" " + HTML)

    assert (m.id, m.exclude, m.exclude_socket, m.html) == ("1700-3", None, SOCKET, HTML)


def test_from_payload_reads_a_session_and_a_socket_excluded_together():
    m = Message.from_payload(NEWS, "b", b"1700-3;x=" + OTHER + b";s=" + SOCKET + b" " + HTML)

    assert (m.id, m.exclude, m.exclude_socket, m.html) == ("1700-3", OTHER, SOCKET, HTML)


@pytest.mark.parametrize(
    "payload",
    [
        b"1700-0;s= <p>no socket after the mark</p>",
        b"1700-0;x=abcdefghijklmnop;s= <p>no socket after the mark</p>",
        b"1700-0;s=abcdefghijklmnop;q=1 <p>an unknown mark</p>",
    ],
)
def test_from_payload_with_a_malformed_socket_mark_keeps_the_whole_payload_as_html(payload):
    m = Message.from_payload(NEWS, "b", payload)

    assert (m.id, m.exclude, m.exclude_socket, m.html) == (None, None, None, payload)


# -- the publisher's time (;t=) ------------------------------------------------------------


def test_from_payload_reads_the_publishers_time_in_seconds():
    m = Message.from_payload(NEWS, "b", b"1700000000000-3;t=1700000000123456 " + HTML)

    assert (m.id, m.key, m.html) == ("1700000000000-3", (1700000000000, 3), HTML)
    assert m.published == pytest.approx(1700000000.123456, abs=1e-6)
    assert (m.exclude, m.exclude_socket) == (None, None)


def test_from_payload_reads_the_time_after_both_exclusions():
    head = b"1700-3;x=" + OTHER + b";s=" + SOCKET + b";t=1700000000000001"

    m = Message.from_payload(NEWS, "b", head + b" " + HTML)

    assert (m.id, m.exclude, m.exclude_socket, m.html) == ("1700-3", OTHER, SOCKET, HTML)
    assert m.published == pytest.approx(1700000000.000001, abs=1e-6)


def test_from_payload_reads_the_time_after_one_exclusion():
    m = Message.from_payload(NEWS, "b", b"1700-3;s=" + SOCKET + b";t=5 " + HTML)

    assert (m.exclude, m.exclude_socket, m.published) == (None, SOCKET, 0.000005)


def test_a_message_without_a_time_has_none():
    assert Message.from_payload(NEWS, "b", b"1700-3 " + HTML).published is None
    assert Message.from_payload(NEWS, "b", HTML).published is None
    assert message().published is None
    assert Message(NEWS, "b", "1700-0", HTML, published=12.5).published == 12.5


@pytest.mark.parametrize(
    "payload",
    [
        b"1700-0;t= <p>no time after the mark</p>",
        b"1700-0;t <p>no = after the mark</p>",
        b"1700-0;t=abc <p>not digits</p>",
        b"1700-0;t=-1700000000000000 <p>a sign</p>",
        b"1700-0;t=+1700000000000000 <p>a sign</p>",
        b"1700-0;t=1700000000.5 <p>a fraction</p>",
        b"1700-0;t=1_700_000 <p>underscores</p>",
        "1700-0;t=17\u0663 <p>a digit that is not ASCII</p>".encode(),
        b"1700-0;x=abcdefghijklmnop;t=x1 <p>not digits after an exclusion</p>",
        b"1700-0;t=1700000000000000;q=1 <p>an unknown mark after the time</p>",
    ],
)
def test_from_payload_with_a_malformed_time_keeps_the_whole_payload_as_html(payload):
    m = Message.from_payload(NEWS, "b", payload)

    assert (m.id, m.key, m.exclude, m.exclude_socket, m.published, m.html) == (
        None,
        None,
        None,
        None,
        None,
        payload,
    )


def test_a_timed_message_looks_the_same_on_the_wire():
    m = Message.from_payload(NEWS, "b", b"1700-0;t=1700000000000000 " + HTML)

    assert m.plain_frame == encode_text_frame(HTML)
    assert m.tagged_frame == encode_text_frame(b"m b 1700-0\n" + HTML)


def test_published_seconds_of_a_history_entrys_time():
    assert published_seconds(b"1700000000250000") == 1700000000.25
    assert published_seconds(b"0") == 0.0
    assert published_seconds(None) is None
    for bad in (b"", b" 1", b"1e6", b"-1"):
        with pytest.raises(ValueError):
            published_seconds(bad)


def test_the_identity_frame_tells_the_socket_id_in_a_line_of_its_own():
    assert identity_frame("Sock3tSock3tSock") == encode_text_frame(b"i Sock3tSock3tSock\n")


def test_a_tagged_deflated_frame_carries_the_tagged_text_compressed_once():
    import zlib

    message = Message(b"turbo:broadcast", "b", "1700-3", b"<li>row</li>" * 50)
    frame = message.tagged_deflated_frame
    assert frame is message.tagged_deflated_frame  # made once, shared by every socket
    assert frame[0] == 0xC1
    text = zlib.decompressobj(-15).decompress(frame[2:] + b"\x00\x00\xff\xff")
    assert text == b"m b 1700-3\n" + b"<li>row</li>" * 50
    assert (
        zlib.decompressobj(-15).decompress(message.plain_deflated_frame[2:] + b"\x00\x00\xff\xff")
        == b"<li>row</li>" * 50
    )
