"""Prometheus metrics: what a web process holds and delivers, and what publishers send.

Counted with ``prometheus-client`` when it is installed (``pip install
'turbocast[metrics]'``) and ``TURBO_METRICS=0`` is not in the process's environment;
otherwise every metric below is a no-op and costs a function call. Served by
:func:`metrics_view`, which the app mounts where it wants (``TURBO_METRICS_ROUTE``,
unset by default) or routes itself.

Several processes (gunicorn's workers): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory, the same for the master and its workers, before they start, and run
gunicorn with ``-c python:turbocast.gunicorn_hooks`` (its ``child_exit`` drops a dead
worker's gauges). Each process then writes its values to files there, and a scrape of
any worker reads them all: the metrics are the server's, whichever worker answers.
This is prometheus-client's multiprocess mode; see its documentation for the rest.

The metrics (the README's "Metrics" section lists them too):

``turbocast_sockets_open{transport}``
    Sockets open now, by transport: ``websocket`` (turbocast's element, the
    ``turbocast.v1`` subprotocol), ``turbo`` (Turbo's own element, plain frames) or
    ``sse`` (Server-Sent Events).
``turbocast_sockets_opened_total{transport}``
    Sockets opened (the 101 or the event stream's 200 went out).
``turbocast_messages_delivered_total``
    Live messages a web process's relay handed to its sockets (to at least one):
    one per message per process, whatever its fan-out; the relay's catch-up after an
    outage of Redis included.
``turbocast_delivery_latency_seconds``
    For each delivered message, the time from its publish (the publisher's clock,
    which travels with the message) to the relay's hand-off to the sockets' writers
    (this host's clock): the clocks must agree (NTP); a negative difference counts
    as 0. Its count equals ``turbocast_messages_delivered_total`` for messages
    turbocast's publisher sent (one published by anything else carries no time and
    is not observed). Each socket's writer sends what it was handed at once; a
    socket that cannot keep up shows in the two metrics below.
``turbocast_socket_messages_total``
    Live messages handed to sockets, one per socket: the fan-out. Those written are
    this less ``turbocast_messages_dropped_total``.
``turbocast_messages_dropped_total``
    Messages for a socket thrown away unsent: after its outbox overflowed, or
    arriving while it closed.
``turbocast_outbox_overflows_total``
    Sockets closed with 4001 because the client read too slowly.
``turbocast_replayed_messages_total``
    Messages sent from the history to a socket that connected or came back with a
    position (a resume), one per socket.
``turbocast_replay_gaps_total``
    Gaps signalled to a socket (a ``refresh``): the history no longer held what it
    missed, at its resume or after an outage of Redis; one per socket.
``turbocast_relay_connected``
    Per process (label ``pid`` in multiprocess mode): 1 while its relay is subscribed
    to Redis with every channel confirmed, 0 while not (or before its first socket).
``turbocast_relay_reconnects_total``
    Times a relay got its subscriptions back after losing Redis.
``turbocast_redis_outage_seconds_total``
    Seconds relays spent without Redis, counted at each retry and at the reconnect.
``turbocast_publishes_total``
    Messages publishers in this process handed to Redis (a batch counts each message).
``turbocast_publish_errors_total``
    Messages publishers failed to hand to Redis (``PublishError`` raised).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from flask import Response

    from .message import Message

logger = logging.getLogger("turbocast.metrics")

try:
    import prometheus_client
except ImportError:  # pragma: no cover - turbocast[metrics] not installed
    prometheus_client = None  # type: ignore[assignment]

#: Whether metrics are counted: ``prometheus-client`` is installed, and the environment
#: variable ``TURBO_METRICS`` is not ``0`` (read once, when this module is imported).
ENABLED = prometheus_client is not None and os.environ.get("TURBO_METRICS", "1") != "0"

#: The latency histogram's buckets (seconds): a local delivery takes well under a millisecond,
#: a catch-up after an outage of Redis seconds to minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip

#: The transports a socket is counted under.
TRANSPORTS = ("websocket", "turbo", "sse")


class _Nothing:
    """What every metric is without prometheus-client: takes any call, counts nothing."""

    def labels(self, *_args: Any, **_kwargs: Any) -> _Nothing:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def dec(self, _amount: float = 1) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
    return prometheus_client.Counter(name, doc, labels) if ENABLED else _Nothing()


def _gauge(
    name: str, doc: str, mode: Literal["livesum", "liveall"], labels: Sequence[str] = ()
) -> Any:
    if not ENABLED:
        return _Nothing()
    return prometheus_client.Gauge(name, doc, labels, multiprocess_mode=mode)


# Names without the _total that prometheus-client adds to a counter's samples.
SOCKETS_OPEN = _gauge(
    "turbocast_sockets_open", "Sockets open now, by transport.", "livesum", ["transport"]
)
SOCKETS_OPENED = _counter(
    "turbocast_sockets_opened", "Sockets opened, by transport.", ["transport"]
)
DELIVERED = _counter(
    "turbocast_messages_delivered", "Live messages a relay handed to its sockets, once each."
)
LATENCY = (
    prometheus_client.Histogram(
        "turbocast_delivery_latency_seconds",
        "Seconds from a delivered message's publish (the publisher's clock) to its hand-off.",
        buckets=LATENCY_BUCKETS,
    )
    if ENABLED
    else _Nothing()
)
SOCKET_MESSAGES = _counter(
    "turbocast_socket_messages", "Live messages handed to sockets, one per socket."
)
DROPPED = _counter(
    "turbocast_messages_dropped",
    "Messages for a socket thrown away unsent: its outbox overflowed, or it was closing.",
)
OVERFLOWS = _counter(
    "turbocast_outbox_overflows", "Sockets closed with 4001: the client read too slowly."
)
REPLAYED = _counter(
    "turbocast_replayed_messages", "Messages sent from the history to a resuming socket."
)
GAPS = _counter(
    "turbocast_replay_gaps", "Gaps signalled to a socket: the history no longer held it all."
)
RELAY_CONNECTED = _gauge(
    "turbocast_relay_connected",
    "1 while this process's relay is subscribed to Redis with every channel confirmed.",
    "liveall",
)
RECONNECTS = _counter(
    "turbocast_relay_reconnects", "Times a relay got its subscriptions back after losing Redis."
)
OUTAGE_SECONDS = _counter("turbocast_redis_outage_seconds", "Seconds relays spent without Redis.")
PUBLISHES = _counter("turbocast_publishes", "Messages handed to Redis by publishers.")
PUBLISH_ERRORS = _counter(
    "turbocast_publish_errors", "Messages publishers failed to hand to Redis."
)

#: Every metric's name as scraped (a counter's with ``_total``), in the order documented.
NAMES = (
    "turbocast_sockets_open",
    "turbocast_sockets_opened_total",
    "turbocast_messages_delivered_total",
    "turbocast_delivery_latency_seconds",
    "turbocast_socket_messages_total",
    "turbocast_messages_dropped_total",
    "turbocast_outbox_overflows_total",
    "turbocast_replayed_messages_total",
    "turbocast_replay_gaps_total",
    "turbocast_relay_connected",
    "turbocast_relay_reconnects_total",
    "turbocast_redis_outage_seconds_total",
    "turbocast_publishes_total",
    "turbocast_publish_errors_total",
)


def relayed(message: Message, sockets: int) -> None:
    """Count a live message the relay just handed to the outboxes of ``sockets`` sockets.

    Once per message per process, in the relay's thread: the cost does not grow with
    the fan-out.

    :param message: the message.
    :param sockets: how many sockets it was handed to (at least one).
    """
    if message.gap:
        GAPS.inc(sockets)
        return
    DELIVERED.inc()
    SOCKET_MESSAGES.inc(sockets)
    if message.published is not None:
        LATENCY.observe(max(0.0, time.time() - message.published))


def replayed(messages: Sequence[Message]) -> None:
    """Count the history sent to one socket at its start (a resume): messages and gaps.

    :param messages: what the write carried.
    """
    gaps = sum(1 for m in messages if m.gap)
    if gaps:
        GAPS.inc(gaps)
    if len(messages) > gaps:
        REPLAYED.inc(len(messages) - gaps)


def socket_opened(transport: str) -> None:
    """Count a socket that opened (and is open).

    :param transport: one of :data:`TRANSPORTS`.
    """
    SOCKETS_OPENED.labels(transport).inc()
    SOCKETS_OPEN.labels(transport).inc()


def socket_closed(transport: str, dropped: int, *, overflowed: bool = False) -> None:
    """Count a socket that closed, the messages it threw away unsent, and its overflow.

    :param transport: the transport it was counted under when it opened.
    :param dropped: its outbox's ``dropped``.
    :param overflowed: it was closed with 4001 (its outbox overflowed).
    """
    SOCKETS_OPEN.labels(transport).dec()
    if dropped:
        DROPPED.inc(dropped)
    if overflowed:
        OVERFLOWS.inc()


def registry() -> Any:
    """The registry to expose: every process's values in multiprocess mode, else this one's.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) a fresh registry reading
    every process's files, as prometheus-client's documentation does per scrape; else
    prometheus-client's default registry (which also holds the app's own metrics).
    Also for a Celery worker's exporter:
    ``prometheus_client.start_http_server(9100, registry=turbocast.metrics.registry())``.

    :raises TurboError: when prometheus-client is not installed.
    """
    if not ENABLED:
        from .errors import TurboError

        raise TurboError(
            "metrics need prometheus-client: pip install 'turbocast[metrics]'"
            if prometheus_client is None
            else "metrics are turned off in this process (TURBO_METRICS=0 in its environment)"
        )
    directory = multiprocess_dir()
    if directory is None:
        return prometheus_client.REGISTRY
    collected = prometheus_client.CollectorRegistry()
    collected.register(_EveryProcess(directory))
    return collected


class _EveryProcess:
    """prometheus-client's multiprocess collector, minus files not yet written.

    A process creates its file empty and sizes it a moment later; a scrape in between
    (or after a worker killed in between) made prometheus-client fail the whole scrape
    (``struct.error``; prometheus/client_python#1199). An empty file holds no values.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for path in glob.glob(os.path.join(self._directory, "*.db")):
            with contextlib.suppress(OSError):  # (a dead worker's, removed meanwhile)
                if os.path.getsize(path) > 0:
                    files.append(path)
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, or ``None`` (one process's values)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_view() -> Response:
    """A Flask view answering a Prometheus scrape in the text format.

    Mount it with ``TURBO_METRICS_ROUTE``, or route it yourself (behind your own
    access control: the numbers are not secret, but need not be public)::

        app.add_url_rule("/metrics", view_func=turbocast.metrics_view)
    """
    from flask import Response

    data = prometheus_client.generate_latest(registry())
    return Response(data, mimetype=prometheus_client.CONTENT_TYPE_LATEST)
