"""What one publish costs the publisher: ``Publisher.to_session`` against a bare PUBLISH.

Against an embedded Redis of its own, one by one (a round trip each), the publisher's
CPU time and the wall time per message for:

- ``bare PUBLISH``: redis-py's ``client.publish(channel, payload)`` of the same bytes,
  the peer;
- ``to_session``: turbocast's publish of a ``TurboStream`` (render, size check, the
  history-and-publish script, the metrics), as a view or a task calls it;
- ``to_session, rendered``: the same with the stream rendered beforehand (``Markup``),
  so the difference is the rendering.

The publisher is pinned to one core where the machine has two (Redis is not pinned: it
takes the other). The target: ``to_session`` at most 2x the bare PUBLISH
in publisher CPU.

    python -m bench.publish_cost [--json]

``make bench`` runs it as W10.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from markupsafe import Markup

from app.embedded_redis import EmbeddedRedis
from bench.common import library_cli
from turbocast import Publisher, TurboStream
from turbocast.channels import channel_for

ROUNDS = 20
PER_ROUND = 250


def measure(calls: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """CPU and wall microseconds per call of each, the median of interleaved rounds.

    The variants take turns, round by round, so a machine whose speed drifts during the
    run (this one's does) slows each of them alike.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for round_ in range(ROUNDS + 1):
        for name, call in calls.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(PER_ROUND):
                call()
            if round_:  # the first round warms up
                samples[name].append(
                    (
                        (time.process_time() - cpu) / PER_ROUND * 1e6,
                        (time.perf_counter() - wall) / PER_ROUND * 1e6,
                    )
                )
    return {
        name: (statistics.median(c for c, _ in got), statistics.median(w for _, w in got))
        for name, got in samples.items()
    }


def results() -> dict[str, Any]:
    """Each publish's CPU and wall µs per message, and its ratios to the bare PUBLISH."""
    server = EmbeddedRedis().start()
    try:
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})  # the publisher on one core; Redis may take the other
        client = redis.Redis.from_url(server.url)
        publisher = Publisher(server.url)
        sid = "s" * 32
        stream = TurboStream.append("messages", Markup("<li>" + "x" * 250 + "</li>"))
        payload = publisher.encode(stream)
        rendered = Markup(payload.decode())
        channel = channel_for(sid)
        rows = measure(
            {
                "bare PUBLISH": lambda: client.publish(channel, payload),
                "to_session": lambda: publisher.to_session(sid, stream),
                "to_session, rendered": lambda: publisher.to_session(sid, rendered),
            }
        )
        publisher.close()
        client.close()
    finally:
        server.close()
    peer = rows["bare PUBLISH"]
    return {
        "bytes": len(payload),
        "rounds": ROUNDS,
        "per_round": PER_ROUND,
        "rows": {
            name: {"cpu_us": cpu, "wall_us": wall, "cpu_ratio": cpu / peer[0],
                   "wall_ratio": wall / peer[1]}
            for name, (cpu, wall) in rows.items()
        },
    }  # fmt: skip


def table(result: dict[str, Any]) -> list[str]:
    """The rows as a Markdown table."""
    lines = [
        "| publish | CPU µs | ÷ bare PUBLISH | wall µs | ÷ bare PUBLISH |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['cpu_us']:.1f} | {row['cpu_ratio']:.2f}× "
            f"| {row['wall_us']:.1f} | {row['wall_ratio']:.2f}× |"
        )
    return lines


def main() -> None:
    library_cli(__doc__ or "", results, table)


if __name__ == "__main__":
    main()
