"""app.turbo.outbox: the frame encoder and the bounded message queue between relay and writer."""

from __future__ import annotations

import struct
import threading

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from app.turbo.message import Message
from app.turbo.outbox import (
    CLOSE_OUTBOX_OVERFLOW,
    HEARTBEAT,
    Closing,
    Outbox,
    encode_text_frame,
)

DEADLINE = 5.0


def msg(html: bytes) -> Message:
    return Message(b"turbo:broadcast", "b", None, html)


def _decode(frame: bytes) -> list:
    # What a browser (a client-side parser) makes of the bytes the server writes.
    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(frame)
    return list(parser.received_frames())


# -- encode_text_frame ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, bytes((0x81, 0))),
        (125, bytes((0x81, 125))),
        (126, bytes((0x81, 126)) + struct.pack("!H", 126)),
        (65535, bytes((0x81, 126)) + struct.pack("!H", 65535)),
        (65536, bytes((0x81, 127)) + struct.pack("!Q", 65536)),
    ],
)
def test_encode_text_frame_uses_the_rfc6455_length_encoding(length, header):
    payload = b"a" * length

    frame = encode_text_frame(payload)

    assert frame[: len(header)] == header
    assert frame[len(header) :] == payload
    assert len(frame) == len(header) + length


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_encode_text_frame_decodes_as_one_final_unmasked_text_frame(length):
    payload = b"x" * length

    frames = _decode(encode_text_frame(payload))

    assert len(frames) == 1
    assert frames[0].opcode is Opcode.TEXT
    assert frames[0].payload == payload.decode()
    assert frames[0].frame_finished and frames[0].message_finished


def test_encode_text_frame_has_fin_bit_and_no_mask_bit():
    frame = encode_text_frame(b"hi")

    assert frame[0] & 0x80  # FIN
    assert frame[0] & 0x0F == 0x1  # text opcode
    assert not frame[1] & 0x80  # servers never mask


def test_encode_text_frame_counts_utf8_bytes_not_characters():
    payload = "é" * 100  # 100 characters, 200 bytes: needs the 16-bit length form

    frame = encode_text_frame(payload.encode())

    assert frame[1] == 126
    assert struct.unpack("!H", frame[2:4])[0] == 200
    assert _decode(frame)[0].payload == payload


# -- put and drain -------------------------------------------------------------------------


def test_outbox_refuses_a_size_below_one():
    with pytest.raises(ValueError, match="at least one"):
        Outbox(0)


def test_drain_returns_everything_queued_in_order_as_one_batch():
    outbox = Outbox(10)
    messages = [msg(b"one"), msg(b"two"), msg(b"three")]
    for m in messages:
        assert outbox.put(m) is True
    outbox.put_control("pong")

    assert len(outbox) == 4  # three messages and a control event
    controls, drained, closing = outbox.drain(0)
    assert controls == ["pong"]
    assert len(drained) == 3
    assert all(d is m for d, m in zip(drained, messages, strict=True))  # the objects, not copies
    assert closing is None
    assert len(outbox) == 0


def test_drain_after_a_batch_starts_empty_again():
    outbox = Outbox(10)
    outbox.put(msg(b"one"))
    outbox.drain(0)
    two = msg(b"two")

    outbox.put(two)

    assert outbox.drain(0) == ([], [two], None)


def test_drain_timeout_with_nothing_queued_returns_empty_lists():
    outbox = Outbox(10)

    assert outbox.drain(0.01) == ([], [], None)


def test_put_control_is_delivered_when_no_data_frames_wait():
    outbox = Outbox(10)
    event = object()

    outbox.put_control(event)

    controls, frames, closing = outbox.drain(None)  # returns at once: there is work
    assert controls == [event]
    assert frames == []
    assert closing is None


def test_put_control_is_accepted_after_close_so_a_close_echo_still_goes_out():
    outbox = Outbox(10)
    outbox.close(1000, "bye")

    outbox.put_control("close-echo")

    assert outbox.drain(0) == (["close-echo"], [], Closing(1000, "bye"))


# -- overflow ------------------------------------------------------------------------------


def test_overflow_clears_pending_messages_and_asks_for_close_4001():
    outbox = Outbox(2)
    assert outbox.put(msg(b"a")) and outbox.put(msg(b"b"))

    assert outbox.put(msg(b"c")) is False

    assert outbox.closing is not None
    assert outbox.closing.code == CLOSE_OUTBOX_OVERFLOW == 4001
    assert "overflow" in outbox.closing.reason
    # The writer gets none of what waited: it is thrown away, and counted, on drain.
    assert outbox.drain(0) == ([], [], outbox.closing)
    assert outbox.dropped == 3  # the two waiting plus the one refused
    assert len(outbox) == 0


def test_puts_after_overflow_are_refused_and_not_counted_again():
    outbox = Outbox(1)
    outbox.put(msg(b"a"))
    outbox.put(msg(b"b"))  # overflow

    assert outbox.put(msg(b"c")) is False
    outbox.drain(0)
    assert outbox.dropped == 2
    assert len(outbox) == 0


def test_outbox_holds_exactly_maxsize_messages_before_overflowing():
    outbox = Outbox(3)

    assert [outbox.put(msg(b"x")) for _ in range(3)] == [True, True, True]
    assert outbox.closing is None
    assert outbox.dropped == 0


# -- close ---------------------------------------------------------------------------------


def test_close_first_reason_wins():
    outbox = Outbox(10)

    outbox.close(1000, "first")
    outbox.close(1001, "second")

    assert outbox.closing == Closing(1000, "first")


def test_close_after_overflow_keeps_the_overflow_reason():
    outbox = Outbox(1)
    outbox.put(msg(b"a"))
    outbox.put(msg(b"b"))

    outbox.close(1000, "normal")

    assert outbox.closing is not None
    assert outbox.closing.code == CLOSE_OUTBOX_OVERFLOW


def test_close_with_no_code_means_send_no_close_frame():
    outbox = Outbox(10)

    outbox.close(None, "peer gone")

    assert outbox.closing == Closing(None, "peer gone")


def test_puts_after_close_are_refused_and_messages_already_queued_are_still_drained():
    outbox = Outbox(10)
    before = msg(b"before")
    outbox.put(before)
    outbox.close(1001, "going away")

    assert outbox.put(msg(b"after")) is False
    assert outbox.dropped == 0
    assert outbox.drain(0) == ([], [before], Closing(1001, "going away"))


# -- a writer thread blocked in drain(None) ------------------------------------------------


class _Writer:
    """A writer thread that drains once, forever, and reports what it got."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.started = threading.Event()
        self.finished = threading.Event()
        self.result: tuple | None = None
        self.thread = threading.Thread(target=self._run, name="test-writer", daemon=True)
        self.thread.start()
        assert self.started.wait(DEADLINE)

    def _run(self) -> None:
        self.started.set()
        self.result = self.outbox.drain(None)
        self.finished.set()

    def join(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


def test_writer_blocked_in_drain_wakes_on_put():
    outbox = Outbox(10)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05), "drain(None) must block while there is no work"

    message = msg(b"frame")
    outbox.put(message)

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == ([], [message], None)


def test_writer_blocked_in_drain_wakes_on_put_control():
    outbox = Outbox(10)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05)

    outbox.put_control("ping")

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == (["ping"], [], None)


def test_writer_blocked_in_drain_wakes_on_close():
    outbox = Outbox(10)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05)

    outbox.close(1001, "server shutting down")

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == ([], [], Closing(1001, "server shutting down"))


def test_beat_reaches_a_waiting_writer_as_the_heartbeat_control():
    outbox = Outbox(10)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05)

    outbox.beat()

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == ([HEARTBEAT], [], None)


def test_beats_and_messages_drain_together():
    outbox = Outbox(10)
    outbox.put(msg(b"one"))
    outbox.beat()
    outbox.put(msg(b"two"))

    controls, messages, closing = outbox.drain(0)

    assert controls == [HEARTBEAT]
    assert [m.html for m in messages] == [b"one", b"two"]
    assert closing is None
