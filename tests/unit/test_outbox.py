"""turbocast.outbox: the frame encoder and the bounded message queue between relay and writer."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.support import from_relay
from turbocast.message import FRAME_OVERHEAD, Message
from turbocast.outbox import (
    CLOSE_OUTBOX_OVERFLOW,
    HEARTBEAT,
    Closing,
    Outbox,
    encode_text_frame,
)

DEADLINE = 5.0


def msg(html: bytes) -> Message:
    return Message(b"turbo:broadcast", "b", None, html)


def sized(size: int) -> Message:
    """A message that counts exactly ``size`` bytes against an outbox's bound."""
    return msg(b"x" * (size - FRAME_OVERHEAD))


def _decode(frame: bytes) -> list[Any]:
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


def test_outbox_refuses_a_size_below_one_byte():
    with pytest.raises(ValueError, match="at least one byte"):
        Outbox(0)


def test_a_message_counts_its_html_and_the_frame_overhead():
    assert msg(b"").size == FRAME_OVERHEAD
    assert msg(b"<p>hi</p>").size == 9 + FRAME_OVERHEAD
    assert sized(100).size == 100


def test_drain_returns_everything_queued_in_order_as_one_batch():
    outbox = Outbox(1024)
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
    outbox = Outbox(1024)
    outbox.put(msg(b"one"))
    outbox.drain(0)
    two = msg(b"two")

    outbox.put(two)

    assert outbox.drain(0) == ([], [two], None)


def test_drain_timeout_with_nothing_queued_returns_empty_lists():
    outbox = Outbox(1024)

    assert outbox.drain(0.01) == ([], [], None)


def test_put_control_is_delivered_when_no_data_frames_wait():
    outbox = Outbox(1024)
    event = object()

    outbox.put_control(event)

    controls, frames, closing = outbox.drain(None)  # returns at once: there is work
    assert controls == [event]
    assert frames == []
    assert closing is None


def test_put_control_is_accepted_after_close_so_a_close_echo_still_goes_out():
    outbox = Outbox(1024)
    outbox.close(1000, "bye")

    outbox.put_control("close-echo")

    assert outbox.drain(0) == (["close-echo"], [], Closing(1000, "bye"))


# -- the bound, in bytes -------------------------------------------------------------------


def test_pending_bytes_counts_what_waits_and_returns_to_zero_when_drained():
    outbox = Outbox(1000)
    assert outbox.pending_bytes == 0

    outbox.put(sized(100))
    outbox.put(sized(250))
    outbox.put_control("pong")  # controls count nothing
    outbox.beat()
    assert outbox.pending_bytes == 350

    outbox.drain(0)
    assert outbox.pending_bytes == 0


def test_outbox_holds_exactly_max_bytes_before_overflowing():
    outbox = Outbox(300)

    assert [outbox.put(sized(100)) for _ in range(3)] == [True, True, True]
    assert outbox.pending_bytes == 300
    assert outbox.closing is None

    assert outbox.put(sized(FRAME_OVERHEAD)) is False  # one byte-less message too many
    assert outbox.closing is not None and outbox.closing.code == CLOSE_OUTBOX_OVERFLOW


def test_many_small_messages_fit_where_a_count_bound_would_have_closed():
    # 1000 messages of about 100 bytes: a burst a client that reads absorbs.
    outbox = Outbox(128 * 1024)

    assert all(outbox.put(msg(b"<p>%d</p>" % i)) for i in range(1000))
    assert outbox.closing is None


def test_a_message_larger_than_the_bound_goes_to_an_empty_outbox():
    outbox = Outbox(100)
    big = sized(10_000)

    assert outbox.put(big) is True
    assert outbox.closing is None
    assert outbox.pending_bytes == 10_000
    assert outbox.drain(0) == ([], [big], None)


def test_a_large_message_goes_again_once_the_writer_has_caught_up():
    outbox = Outbox(100)
    outbox.put(sized(10_000))
    outbox.drain(0)

    assert outbox.put(sized(10_000)) is True
    assert outbox.closing is None


def test_a_message_larger_than_the_bound_overflows_an_outbox_that_is_not_empty():
    outbox = Outbox(100)
    outbox.put(sized(FRAME_OVERHEAD))

    assert outbox.put(sized(10_000)) is False
    assert outbox.closing is not None and outbox.closing.code == CLOSE_OUTBOX_OVERFLOW


def test_overflow_discards_pending_messages_and_asks_for_close_4001():
    outbox = Outbox(200)
    assert outbox.put(sized(100)) and outbox.put(sized(100))

    assert outbox.put(sized(100)) is False

    assert outbox.closing is not None
    assert outbox.closing.code == CLOSE_OUTBOX_OVERFLOW == 4001
    assert "overflow" in outbox.closing.reason
    # The writer gets none of what waited: it is thrown away, and counted, on drain.
    assert outbox.drain(0) == ([], [], outbox.closing)
    assert outbox.dropped == 3  # the two waiting plus the one that overflowed
    assert len(outbox) == 0
    assert outbox.pending_bytes == 0


def test_controls_still_reach_the_writer_after_an_overflow():
    outbox = Outbox(100)
    outbox.put(sized(100))
    outbox.put(sized(100))  # overflow

    outbox.put_control("close-echo")

    controls, messages, closing = outbox.drain(0)
    assert (controls, messages) == (["close-echo"], [])
    assert closing is not None and closing.code == CLOSE_OUTBOX_OVERFLOW


def test_puts_after_overflow_are_refused_and_neither_queued_nor_counted_as_bytes():
    outbox = Outbox(100)
    outbox.put(sized(100))
    outbox.put(sized(100))  # overflow

    assert outbox.put(sized(100)) is False
    assert outbox.pending_bytes == 200  # the refused one is not counted
    assert outbox.dropped == 1  # but it is dropped
    outbox.drain(0)
    assert outbox.dropped == 3  # the two thrown away, and the one refused
    assert len(outbox) == 0
    assert outbox.pending_bytes == 0


# -- close ---------------------------------------------------------------------------------


def test_close_first_reason_wins():
    outbox = Outbox(1024)

    outbox.close(1000, "first")
    outbox.close(1001, "second")

    assert outbox.closing == Closing(1000, "first")


def test_close_after_overflow_keeps_the_overflow_reason():
    outbox = Outbox(100)
    outbox.put(sized(100))
    outbox.put(sized(100))

    outbox.close(1000, "normal")

    assert outbox.closing is not None
    assert outbox.closing.code == CLOSE_OUTBOX_OVERFLOW


def test_close_with_no_code_means_send_no_close_frame():
    outbox = Outbox(1024)

    outbox.close(None, "peer gone")

    assert outbox.closing == Closing(None, "peer gone")


def test_puts_after_close_are_refused_and_messages_already_queued_are_still_drained():
    outbox = Outbox(1024)
    before = msg(b"before")
    outbox.put(before)
    outbox.close(1001, "going away")

    assert outbox.put(msg(b"after")) is False
    assert (outbox.discarded, outbox.refused) == (0, 1)
    assert outbox.drain(0) == ([], [before], Closing(1001, "going away"))
    assert outbox.pending_bytes == 0


# -- one relay thread putting, one writer thread draining ----------------------------------


class _Producer:
    """The relay's side: puts ``count`` messages of varied sizes from its own thread.

    It lets the writer have the GIL after every put (``sleep(0)``: a yield, not a
    wait), so puts and drains interleave as they do under load.
    """

    def __init__(self, outbox: Outbox, count: int) -> None:
        self.outbox = outbox
        self.messages = [msg(b"x" * (i * 37 % 2000)) for i in range(count)]
        self.results: list[bool] = []
        self.lowest_pending = 0  # as the relay thread saw it: never below zero
        self.thread = threading.Thread(target=self._run, name="test-relay", daemon=True)

    def _run(self) -> None:
        for m in self.messages:
            self.results.append(self.outbox.put(m))
            self.lowest_pending = min(self.lowest_pending, self.outbox.pending_bytes)


def _drain_until_done(
    outbox: Outbox, producer: _Producer, stall_after: int | None = None
) -> list[Message]:
    """The writer's side, in the test's thread: drain in batches until the relay is done
    and nothing waits any more. With ``stall_after``, it stops reading once it got that
    many, until the relay is done (a client that stops reading)."""
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE * 4
    producer.thread.start()
    while producer.thread.is_alive() or len(outbox):
        assert time.monotonic() < deadline, "the writer did not catch up"
        if stall_after is not None and len(got) >= stall_after and producer.thread.is_alive():
            producer.thread.join(DEADLINE)
            continue
        _, messages, _ = outbox.drain(0.01)
        got += messages
    producer.thread.join(DEADLINE)
    return got


def test_concurrent_put_and_drain_deliver_everything_in_order_and_the_counters_meet():
    outbox = Outbox(64 * 1024 * 1024)  # never overflows: every message gets through
    producer = _Producer(outbox, 5_000)

    got = _drain_until_done(outbox, producer)

    assert all(producer.results)
    assert len(got) == len(producer.messages)
    assert all(g is m for g, m in zip(got, producer.messages, strict=True))
    assert producer.lowest_pending >= 0
    assert outbox.pending_bytes == 0
    assert outbox.dropped == 0


def test_concurrent_put_and_drain_through_an_overflow_account_for_every_message():
    outbox = Outbox(20_000)
    producer = _Producer(outbox, 5_000)

    got = _drain_until_done(outbox, producer, stall_after=1000)  # then the client stalls

    assert producer.lowest_pending >= 0
    assert outbox.pending_bytes == 0
    assert outbox.closing is not None and outbox.closing.code == CLOSE_OUTBOX_OVERFLOW
    overflow = producer.results.index(False)
    assert all(producer.results[:overflow])
    assert not any(producer.results[overflow:])  # closed: everything after is refused
    # Each message up to the one that overflowed was sent or thrown away, once, in order.
    queued = producer.messages[: overflow + 1]
    assert len(got) + outbox.discarded == len(queued)
    # And every message put was either sent or dropped (discarded, or refused once closed).
    assert len(got) + outbox.dropped == len(producer.messages)
    assert all(g is m for g, m in zip(got, queued, strict=False))


# -- a writer thread blocked in drain(None) ------------------------------------------------


class _Writer:
    """A writer thread that drains once, forever, and reports what it got."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.started = threading.Event()
        self.finished = threading.Event()
        self.result: tuple[object, ...] | None = None
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
    outbox = Outbox(1024)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05), "drain(None) must block while there is no work"

    message = msg(b"frame")
    outbox.put(message)

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == ([], [message], None)


def test_writer_blocked_in_drain_wakes_on_put_control():
    outbox = Outbox(1024)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05)

    outbox.put_control("ping")

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == (["ping"], [], None)


def test_writer_blocked_in_drain_wakes_on_close():
    outbox = Outbox(1024)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05)

    outbox.close(1001, "server shutting down")

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == ([], [], Closing(1001, "server shutting down"))


def test_beat_reaches_a_waiting_writer_as_the_heartbeat_control():
    outbox = Outbox(1024)
    writer = _Writer(outbox)
    assert not writer.finished.wait(0.05)

    outbox.beat()

    assert writer.finished.wait(DEADLINE)
    writer.join()
    assert writer.result == ([HEARTBEAT], [], None)


def test_beats_and_messages_drain_together():
    outbox = Outbox(1024)
    outbox.put(msg(b"one"))
    outbox.beat()
    outbox.put(msg(b"two"))

    controls, messages, closing = outbox.drain(0)

    assert controls == [HEARTBEAT]
    assert [m.html for m in messages] == [b"one", b"two"]
    assert closing is None


def test_a_deflated_frame_sets_rsv1_and_inflates_back_to_the_message():
    import zlib

    from turbocast.outbox import deflate_text_frame

    text = ("<li>row</li>" * 200).encode()
    frame = deflate_text_frame(text)
    assert frame[0] == 0xC1  # FIN, RSV1 (compressed), text
    length, payload = frame[1], frame[2:]  # (2,400 bytes deflate to under 126)
    assert length == len(payload) < len(text) / 10
    # RFC 7692 §7.2.2: the receiver appends the sync flush's tail before inflating.
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == text


def test_a_message_deflating_cannot_shrink_goes_as_it_is():
    from turbocast.outbox import deflate_text_frame, encode_text_frame

    assert deflate_text_frame(b"7") == encode_text_frame(b"7")


# -- under gevent: a list and gevent's Event instead of gevent's queue ---------------------


@pytest.fixture
def green(monkeypatch):
    """Outboxes made as under gevent's monkey-patching (this process is not patched)."""
    import turbocast.outbox

    monkeypatch.setattr(turbocast.outbox, "_gevent_patched", lambda: True)


def _green_writer(outbox: Outbox) -> Any:
    import gevent

    writer = gevent.spawn(outbox.drain, None)
    gevent.sleep(0)  # it runs until it waits
    assert not writer.ready(), "drain(None) must wait while there is no work"
    return writer


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        (lambda o: o.put(msg(b"frame")), ([], [b"frame"], None)),
        (lambda o: o.put_control("ping"), (["ping"], [], None)),
        (lambda o: o.beat(), ([HEARTBEAT], [], None)),
        (lambda o: o.close(1001, "going away"), ([], [], Closing(1001, "going away"))),
    ],
    ids=["put", "put_control", "beat", "close"],
)
def test_a_green_writer_waiting_in_drain_wakes_on_each_kind_of_work(green, act, expected):
    outbox = Outbox(1024)
    writer = _green_writer(outbox)

    act(outbox)

    controls, messages, closing = writer.get(timeout=DEADLINE)
    assert (controls, [m.html for m in messages], closing) == expected


def test_a_green_drain_times_out_empty_and_then_still_wakes(green):
    outbox = Outbox(1024)
    assert outbox.drain(0.01) == ([], [], None)
    writer = _green_writer(outbox)

    outbox.put(msg(b"late"))

    assert [m.html for m in writer.get(timeout=DEADLINE)[1]] == [b"late"]
    assert outbox.drain(0) == ([], [], None)  # nothing left behind, nothing twice


def test_green_put_and_drain_deliver_everything_in_order_through_the_bound(green):
    import gevent

    outbox = Outbox(20_000)
    messages = [msg(b"x" * (i * 37 % 2000)) for i in range(5_000)]
    results: list[bool] = []
    got: list[Message] = []

    def relay() -> None:
        for n, m in enumerate(messages):
            results.append(outbox.put(m))
            if n % 7 == 0:
                gevent.sleep(0)  # let the writer in, as the relay does when it waits

    def writer() -> None:
        while True:
            _, batch, closing = outbox.drain(None)
            got.extend(batch)
            if closing is not None or len(got) == len(messages):
                return
            if len(got) >= 1000:
                gevent.sleep(0.05)  # then the client stalls: the relay overflows it

    gevent.joinall([gevent.spawn(relay), gevent.spawn(writer)], timeout=DEADLINE * 4)

    assert len(results) == len(messages)
    assert outbox.closing is not None and outbox.closing.code == CLOSE_OUTBOX_OVERFLOW
    overflow = results.index(False)
    assert all(results[:overflow]) and not any(results[overflow:])
    outbox.drain(0)  # what still waited is thrown away and counted
    queued = messages[: overflow + 1]
    assert all(g is m for g, m in zip(got, queued, strict=False))
    assert len(got) + outbox.dropped == len(messages)
    assert outbox.pending_bytes == 0


def test_an_idle_green_outbox_is_a_fraction_of_gevent_queue(green):
    import tracemalloc

    import gevent.queue

    def size(make: Any) -> float:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(200)]
            return (tracemalloc.get_traced_memory()[0] - before) / len(kept)
        finally:
            tracemalloc.stop()

    assert size(lambda: Outbox(1024)) < size(gevent.queue.SimpleQueue) / 3


# -- the relay writing now -----------------------------------------------------------------


def test_an_outbox_that_writes_now_writes_while_all_put_was_sent():
    outbox = Outbox(1 << 20)
    written: list[Message] = []
    outbox.write_now(lambda m: written.append(m) or b"")
    one, two, three = msg(b"1"), msg(b"2"), msg(b"3")

    assert from_relay(outbox, one) and written == [one] and len(outbox) == 0

    assert outbox.drain(0) == ([], [], None)  # the writer's turn: the relay queues
    assert from_relay(outbox, two) and written == [one]
    outbox.end_turn()
    assert from_relay(outbox, three) and written == [one]  # two waits: three must not overtake

    assert outbox.drain(0) == ([], [two, three], None)
    outbox.end_turn()
    assert from_relay(outbox, one) and written == [one, one]


def test_a_rest_goes_before_anything_else_and_holds_the_relay_back_till_sent():
    outbox = Outbox(1 << 20)
    outbox.write_now(lambda m: m.plain_frame[3:])  # the socket took three bytes
    first, second = msg(b"first"), msg(b"second")

    assert from_relay(outbox, first)
    assert outbox.pending_bytes == len(first.plain_frame) - 3
    assert from_relay(outbox, second)  # behind the rest: queued

    assert outbox.drain(0) == ([], [second], None)  # (the wake-up is no control)
    assert outbox.take_rest() == first.plain_frame[3:]
    assert outbox.take_rest() == b""
    outbox.end_turn()
    assert outbox.pending_bytes == 0


def test_a_write_that_fails_leaves_the_relay_running_and_the_message_queued(caplog):
    outbox = Outbox(1 << 20)

    def broken(message: Message) -> bytes:
        raise RuntimeError("boom")

    outbox.write_now(broken)
    one = msg(b"1")

    assert from_relay(outbox, one)
    assert not outbox.writing_now
    assert outbox.drain(0) == ([], [one], None)
    assert "could not write" in caplog.text


def test_after_the_last_turn_or_a_stop_the_relay_only_queues():
    for end in ("last turn", "stop"):
        outbox = Outbox(1 << 20)
        written: list[Message] = []
        outbox.write_now(lambda m, written=written: written.append(m) or b"")
        if end == "last turn":
            outbox.drain(0)
            outbox.end_turn(last=True)
        else:
            outbox.stop_writing_now()

        assert from_relay(outbox, msg(b"1"))
        assert written == [] and len(outbox) == 1, end
