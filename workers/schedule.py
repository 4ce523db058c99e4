"""Celery beat's schedule: data only. workers/celery.py loads it; exactly one beat runs it."""

from __future__ import annotations

from typing import Any


def beat_schedule(clock_seconds: float) -> dict[str, Any]:
    """The periodic tasks.

    :param clock_seconds: how often the live clock is broadcast (``DEMO_CLOCK_SECONDS``).
    """
    return {
        "broadcast-clock": {
            "task": "workers.tasks.broadcast_clock",
            "schedule": clock_seconds,
            # A clock tick that waited longer than its period is stale: drop it.
            "options": {"expires": clock_seconds},
        },
    }
