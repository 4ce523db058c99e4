"""The publisher: a separate process standing in for a Celery worker.

    python -m bench.publish KIND REDIS_URL SPEC_JSON

SPEC: {"sids": [...], "count": N, "rate": msgs/s or 0 for as fast as possible,
"broadcast": bool, "spacing": seconds between broadcasts, "batch": N to send
targeted messages N at a time with turbocast's ``Publisher.batch()`` (only with
rate 0)}. Prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from bench.common import message_html


def sender(
    kind: str, redis_url: str
) -> tuple[Callable[[str, str], object], Callable[[str], object]]:
    """(to_session(sid), to_all()) for a target kind; each call publishes one message."""
    if kind == "turbocast":
        from markupsafe import Markup

        from turbocast import Publisher

        publisher = Publisher(redis_url)

        def stream(html: str) -> Markup:
            return Markup(html)  # noqa: S704 - the benchmark's own HTML

        return (
            lambda sid, html: publisher.to_session(sid, stream(html)),
            lambda html: publisher.to_all(stream(html)),
        )
    if kind == "floor":
        import redis

        client = redis.Redis.from_url(redis_url)
        return (
            lambda sid, html: client.publish(f"floor:session:{sid}", html),
            lambda html: client.publish("floor:broadcast", html),
        )
    if kind == "socketio":
        from flask_socketio import SocketIO

        emitter = SocketIO(message_queue=redis_url)
        return (
            lambda sid, html: emitter.emit("turbo", html, to=sid),
            lambda html: emitter.emit("turbo", html),
        )
    raise SystemExit(f"unknown kind {kind}")


def batched(redis_url: str, sids: list[str], count: int, size: int) -> dict[str, float]:
    """Send ``count`` targeted messages ``size`` at a time, each batch one round trip."""
    from markupsafe import Markup

    from turbocast import Publisher

    publisher = Publisher(redis_url)
    start = time.monotonic()
    for first in range(0, count, size):
        with publisher.batch() as batch:
            for n in range(first, min(first + size, count)):
                batch.to_session(sids[n % len(sids)], Markup(message_html(n)))  # noqa: S704
    elapsed = time.monotonic() - start
    return {"sent": count, "seconds": elapsed, "rate": count / elapsed if elapsed else 0}


def main() -> None:
    kind, redis_url, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    size = int(spec.get("batch") or 0)
    if size:
        if kind != "turbocast" or spec.get("rate") or spec.get("broadcast"):
            raise SystemExit("batch: turbocast's targeted messages, as fast as it can, only")
        print(json.dumps(batched(redis_url, spec["sids"], int(spec["count"]), size)))
        return
    to_session, to_all = sender(kind, redis_url)
    sids, count, rate = spec.get("sids", []), int(spec["count"]), float(spec.get("rate", 0))
    deadline = time.monotonic() + float(spec.get("max_seconds", 120))
    start = time.monotonic()
    sent = 0
    for n in range(count):
        if time.monotonic() > deadline:
            break
        if spec.get("broadcast"):
            to_all(message_html(n))
            time.sleep(float(spec.get("spacing", 0.5)))  # pacing of the load, not a test wait
        else:
            if rate:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            to_session(sids[n % len(sids)], message_html(n))
        sent += 1
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": elapsed, "rate": sent / elapsed if elapsed else 0}))


if __name__ == "__main__":
    main()
