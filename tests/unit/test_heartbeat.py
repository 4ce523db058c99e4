"""turbocast.heartbeat: one thread that tells every socket's writer when to ping.

The loop is driven in the test's own thread through a scripted stop event (each
wait is one interval, recorded, and says when to stop); one test runs the real
thread, with deadline waits.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from turbocast.heartbeat import Heartbeat
from turbocast.outbox import HEARTBEAT, Outbox

DEADLINE = 5.0


class ScriptedStop(threading.Event):
    """A stop event whose ``wait`` returns at once: ``False`` ``beats`` times, then ``True``."""

    def __init__(self, beats: int) -> None:
        super().__init__()
        self.beats = beats
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) > self.beats:
            self.set()
        return self.is_set()


def beats_of(outbox: Outbox) -> int:
    """How many heartbeats wait in ``outbox`` (and nothing else)."""
    controls, messages, _ = outbox.drain(0)
    assert messages == []
    assert all(c is HEARTBEAT for c in controls)
    return len(controls)


def beats_of_waiting(outbox: Outbox) -> int:
    """Wait for the next heartbeats in ``outbox``; how many came."""
    controls, messages, _ = outbox.drain(DEADLINE)
    assert messages == [] and all(c is HEARTBEAT for c in controls)
    return len(controls)


@pytest.mark.parametrize("interval", [0, -1, -0.5])
def test_an_interval_of_zero_or_less_is_refused(interval):
    with pytest.raises(ValueError, match="interval above 0"):
        Heartbeat(interval, set)


def test_every_interval_each_outbox_gets_one_beat():
    outboxes = [Outbox(1024) for _ in range(3)]
    heartbeat = Heartbeat(25.0, lambda: outboxes)
    heartbeat._stop = stop = ScriptedStop(beats=4)

    heartbeat._run()

    assert stop.waits == [25.0] * 5  # one wait of an interval before each beat, and the last
    assert [beats_of(o) for o in outboxes] == [4, 4, 4]


def test_each_beat_asks_again_which_outboxes_there_are():
    early, late, gone = Outbox(1024), Outbox(1024), Outbox(1024)
    rounds = iter([{early, gone}, {early}, {early, late}])
    heartbeat = Heartbeat(1.0, lambda: next(rounds))
    heartbeat._stop = ScriptedStop(beats=3)

    heartbeat._run()

    assert (beats_of(early), beats_of(late), beats_of(gone)) == (3, 1, 1)


def test_stop_before_the_first_interval_beats_nobody():
    outbox = Outbox(1024)
    heartbeat = Heartbeat(1.0, lambda: [outbox])
    heartbeat._stop = ScriptedStop(beats=0)

    heartbeat._run()

    assert len(outbox) == 0


def test_the_thread_beats_until_stopped_then_ends(caplog):
    outboxes = [Outbox(1024), Outbox(1024)]
    heartbeat = Heartbeat(0.01, lambda: outboxes)
    with caplog.at_level(logging.INFO, logger="turbocast.heartbeat"):
        heartbeat.start()
    try:
        assert heartbeat.alive
        for outbox in outboxes:
            beats = 0
            deadline = time.monotonic() + DEADLINE
            while beats < 3:  # an interval apart, each drain waits for the next
                assert time.monotonic() < deadline, "no heartbeat"
                beats += beats_of_waiting(outbox)
    finally:
        heartbeat.stop(DEADLINE)

    assert not heartbeat.alive
    started = [r for r in caplog.records if "heartbeat started" in r.getMessage()]
    assert len(started) == 1 and started[0].turbo_interval == 0.01


def test_stop_of_a_heartbeat_never_started_returns_at_once():
    heartbeat = Heartbeat(1.0, set)

    heartbeat.stop(DEADLINE)

    assert not heartbeat.alive


def test_the_thread_class_is_injected():
    made: list[threading.Thread] = []

    class Recording(threading.Thread):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    Heartbeat(1.0, set, thread_class=Recording)

    assert [(t.name, t.daemon) for t in made] == [("turbo-heartbeat", True)]
