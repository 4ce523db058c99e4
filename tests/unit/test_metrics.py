"""turbocast.metrics: what each event counts, the view, the settings, the names documented.

The metrics of a real two-worker gunicorn under load: tests/integration/test_metrics.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from turbocast import Turbo, TurboError, TurboStream, metrics
from turbocast.gunicorn_hooks import child_exit
from turbocast.message import REFRESH_HTML, Message
from turbocast.outbox import CLOSE_OUTBOX_OVERFLOW, Outbox
from turbocast.publisher import Publisher

README = Path(__file__).resolve().parents[2] / "README.md"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def message(published: float | None, *, gap: bool = False) -> Message:
    html = REFRESH_HTML if gap else b"<turbo-stream></turbo-stream>"
    return Message(b"turbo:session:x", "s", "1-0", html, gap=gap, published=published)


def test_a_relayed_message_counts_once_with_its_fan_out_and_observes_its_latency():
    delivered = sample("turbocast_messages_delivered_total")
    fanout = sample("turbocast_socket_messages_total")
    observed = sample("turbocast_delivery_latency_seconds_count")
    total = sample("turbocast_delivery_latency_seconds_sum")

    sent = time.time() - 0.25
    metrics.relayed(message(sent), 1000)

    assert sample("turbocast_messages_delivered_total") - delivered == 1
    assert sample("turbocast_socket_messages_total") - fanout == 1000
    assert sample("turbocast_delivery_latency_seconds_count") - observed == 1
    assert 0.25 <= sample("turbocast_delivery_latency_seconds_sum") - total < 5


def test_a_clock_ahead_of_this_hosts_observes_zero_and_no_time_observes_nothing():
    delivered = sample("turbocast_messages_delivered_total")
    observed = sample("turbocast_delivery_latency_seconds_count")
    total = sample("turbocast_delivery_latency_seconds_sum")
    fast = sample("turbocast_delivery_latency_seconds_bucket", le="0.0005")

    metrics.relayed(message(time.time() + 60), 1)  # the publisher's clock is a minute ahead
    metrics.relayed(message(None), 1)  # published by something else

    assert sample("turbocast_messages_delivered_total") - delivered == 2
    assert sample("turbocast_delivery_latency_seconds_count") - observed == 1
    assert sample("turbocast_delivery_latency_seconds_sum") - total == 0
    assert sample("turbocast_delivery_latency_seconds_bucket", le="0.0005") - fast == 1


def test_a_replay_and_gaps_are_counted_apart_from_delivered():
    delivered = sample("turbocast_messages_delivered_total")
    replayed = sample("turbocast_replayed_messages_total")
    gaps = sample("turbocast_replay_gaps_total")

    metrics.replayed([message(1.0), message(2.0), message(None, gap=True)])
    metrics.relayed(message(None, gap=True), 3)  # a catch-up's gap, to three sockets

    assert sample("turbocast_replayed_messages_total") - replayed == 2
    assert sample("turbocast_replay_gaps_total") - gaps == 4
    assert sample("turbocast_messages_delivered_total") == delivered


def test_a_socket_counts_open_until_closed_with_its_drops_and_overflow():
    opened = sample("turbocast_sockets_opened_total", transport="sse")
    now_open = sample("turbocast_sockets_open", transport="sse")
    dropped = sample("turbocast_messages_dropped_total")
    overflows = sample("turbocast_outbox_overflows_total")

    metrics.socket_opened("sse")
    assert sample("turbocast_sockets_open", transport="sse") - now_open == 1
    metrics.socket_closed("sse", 3, overflowed=True)

    assert sample("turbocast_sockets_opened_total", transport="sse") - opened == 1
    assert sample("turbocast_sockets_open", transport="sse") == now_open
    assert sample("turbocast_messages_dropped_total") - dropped == 3
    assert sample("turbocast_outbox_overflows_total") - overflows == 1


def test_an_outbox_counts_what_it_threw_away_and_what_it_refused_while_closing():
    outbox = Outbox(100)
    outbox.put(message(None))
    outbox.close(1000, "bye")
    assert outbox.put(message(None)) is False
    assert (outbox.refused, outbox.dropped) == (1, 1)  # the one queued before is still sent

    overflowing = Outbox(100)
    overflowing.put(Message(b"c", "s", None, b"x" * 100))
    overflowing.put(Message(b"c", "s", None, b"x" * 100))  # overflow
    closing = overflowing.closing
    assert closing is not None and closing.code == CLOSE_OUTBOX_OVERFLOW
    overflowing.drain(0)
    assert (overflowing.discarded, overflowing.dropped) == (2, 2)


def test_a_publish_redis_refuses_counts_as_an_error_not_a_publish():
    publishes = sample("turbocast_publishes_total")
    errors = sample("turbocast_publish_errors_total")
    # Port 1: nothing listens, so both attempts are refused at once.
    publisher = Publisher("redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(TurboError):
        publisher.to_all(TurboStream.remove("x"))
    with pytest.raises(TurboError), publisher.batch() as batch:
        batch.to_all(TurboStream.remove("x"))
        batch.to_all(TurboStream.remove("y"))
    with pytest.raises(TurboError):
        publisher.disconnect_session("a" * 32)  # an order, not a message: not counted

    assert sample("turbocast_publish_errors_total") - errors == 3
    assert sample("turbocast_publishes_total") == publishes


def _app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x" * 32, REDIS_URL="redis://127.0.0.1:1/0", **config)
    Turbo(app)
    return app


def test_the_route_is_off_by_default_and_serves_the_text_format_when_set():
    assert "turbo_metrics" not in _app().view_functions
    app = _app(TURBO_METRICS_ROUTE="/ops/metrics")
    response = app.test_client().get("/ops/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    body = response.get_data(as_text=True)
    assert "# TYPE turbocast_messages_delivered_total counter" in body
    assert "# TYPE turbocast_delivery_latency_seconds histogram" in body


def test_the_route_without_prometheus_client_fails_at_set_up(monkeypatch):
    monkeypatch.setattr(metrics, "ENABLED", False)
    monkeypatch.setattr(metrics, "prometheus_client", None)
    with pytest.raises(TurboError, match=r"pip install 'turbocast\[metrics\]'"):
        _app(TURBO_METRICS_ROUTE="/metrics")


def test_turbo_metrics_0_turns_counting_off_in_that_process():
    code = (
        "import turbocast.metrics as m; m.replayed([]); "
        "print(m.ENABLED, type(m.DELIVERED).__name__)"
    )
    for env, expected in (({"TURBO_METRICS": "0"}, "False _Nothing"), ({}, "True Counter")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "TURBO_METRICS": "1", **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.split() == expected.split()


def test_in_multiprocess_mode_a_scrape_reads_every_process_file(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    collected = metrics.registry()
    assert collected is not REGISTRY
    assert list(collected.collect()) == []  # no process wrote anything there yet
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert metrics.registry() is REGISTRY


def test_a_process_file_not_yet_written_does_not_fail_the_scrape(monkeypatch, tmp_path):
    # A worker creates its file empty and sizes it a moment later (or was killed between):
    # prometheus-client alone fails the whole scrape on it (client_python#1199).
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    code = "from turbocast import metrics; metrics.PUBLISHES.inc(3)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    (tmp_path / "counter_999999.db").touch()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    found = {
        sample.name: sample.value
        for metric in metrics.registry().collect()
        for sample in metric.samples
    }

    assert found["turbocast_publishes_total"] == 3


def test_gunicorns_child_exit_drops_a_dead_workers_live_gauges(monkeypatch, tmp_path):
    for name in ("gauge_livesum_4242.db", "gauge_liveall_4242.db", "counter_4242.db",
                 "gauge_livesum_4343.db"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    worker = SimpleNamespace(pid=4242)

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    child_exit(None, worker)  # not in multiprocess mode: nothing to do
    assert len(list(tmp_path.iterdir())) == 4

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    child_exit(None, worker)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_4242.db",  # its counts stay in the sums
        "gauge_livesum_4343.db",  # another worker's
    ]


def test_the_readme_lists_every_metric_and_only_those():
    text = README.read_text()
    section = text.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(turbocast_[a-z_]+)(?:\{[a-z]+\})?` \|", section, re.MULTILINE)
    assert tuple(listed) == metrics.NAMES
