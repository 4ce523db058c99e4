"""The publisher: a separate process standing in for a Celery worker.

    python -m bench.publish KIND REDIS_URL SPEC_JSON

SPEC: {"sids": [...], "count": N, "rate": msgs/s or 0 for as fast as possible,
"broadcast": bool, "spacing": seconds between broadcasts, "batch": N to send
targeted messages N at a time, one round trip each (only with rate 0)}. Prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import redis
import socketio

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


def batch_sender(kind: str, redis_url: str) -> Callable[[list[tuple[str, str]]], object]:
    """``send(messages)``: publish these ``(sid, html)`` targeted messages in one round trip.

    Each mechanism pipelined its own way: turbocast's ``Publisher.batch()``, the floor's
    PUBLISHes in a redis-py pipeline, Flask-SocketIO's emits held by its Redis queue and
    sent as one pipeline of the PUBLISHes it would have sent one by one.
    """
    if kind == "turbocast":
        from markupsafe import Markup

        from turbocast import Publisher

        publisher = Publisher(redis_url)

        def send_turbocast(messages: list[tuple[str, str]]) -> None:
            with publisher.batch() as batch:
                for sid, html in messages:
                    batch.to_session(sid, Markup(html))  # noqa: S704 - the benchmark's own HTML

        return send_turbocast
    if kind == "floor":
        client = redis.Redis.from_url(redis_url)

        def send_floor(messages: list[tuple[str, str]]) -> None:
            pipe = client.pipeline(transaction=False)
            for sid, html in messages:
                pipe.publish(f"floor:session:{sid}", html)
            pipe.execute()

        return send_floor
    if kind == "socketio":
        from flask_socketio import SocketIO

        queue = HeldRedisManager(redis_url)
        emitter = SocketIO(message_queue=redis_url, client_manager=queue)

        def send_socketio(messages: list[tuple[str, str]]) -> None:
            for sid, html in messages:
                emitter.emit("turbo", html, to=sid)
            queue.flush()

        return send_socketio
    raise SystemExit(f"unknown kind {kind}")


class HeldRedisManager(socketio.RedisManager):  # type: ignore[misc]
    """Flask-SocketIO's write-only Redis queue, its publishes held until :meth:`flush`.

    ``_publish`` is python-socketio's documented hook for a pub/sub manager's backend;
    this one keeps the JSON it would have published and sends it all as one pipeline.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url, channel="flask-socketio", write_only=True)
        self.client = redis.Redis.from_url(url)
        self.held: list[str] = []

    def _publish(self, data: object) -> None:
        self.held.append(self.json.dumps(data))

    def flush(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for payload in self.held:
            pipe.publish(self.channel, payload)
        pipe.execute()
        self.held.clear()


def batched(
    kind: str, redis_url: str, sids: list[str], count: int, size: int
) -> dict[str, float | None]:
    """Send ``count`` targeted messages ``size`` at a time, each batch one round trip."""
    send = batch_sender(kind, redis_url)
    start, cpu = time.monotonic(), time.process_time()
    for first in range(0, count, size):
        send(
            [(sids[n % len(sids)], message_html(n)) for n in range(first, min(first + size, count))]
        )
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    return {
        "sent": count,
        "seconds": elapsed,
        "rate": count / elapsed if elapsed else 0,
        # The publishing alone: not the interpreter's start or the imports.
        "cpu_us_per_msg": cpu / count * 1e6 if count else None,
    }


def main() -> None:
    kind, redis_url, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    size = int(spec.get("batch") or 0)
    if size:
        if spec.get("rate") or spec.get("broadcast"):
            raise SystemExit("batch: targeted messages, as fast as it can, only")
        print(json.dumps(batched(kind, redis_url, spec["sids"], int(spec["count"]), size)))
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
