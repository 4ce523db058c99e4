"""Celery tasks: thin. They take ids, call the logic in app/, and publish.

Every task retries with backoff when Redis is briefly unreachable
(``PublishError``), but not for a message that is simply too large.
"""

from __future__ import annotations

from celery import shared_task
from flask import current_app

from app.demo import services
from app.extensions import turbo
from turbocast import MessageTooLargeError, PublishError

RETRY = {
    "autoretry_for": (PublishError,),
    "dont_autoretry_for": (MessageTooLargeError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 8,
    "ignore_result": True,
}


@shared_task(**RETRY)  # type: ignore[untyped-decorator]
def run_job(session_id: str, job_id: str, steps: int) -> str:
    """The demo's long job: push progress to the session that started it, then the result."""
    pause = float(current_app.config["DEMO_JOB_STEP_SECONDS"])
    return services.run_job(turbo.publisher, session_id, job_id, steps, pause)


@shared_task(**RETRY)  # type: ignore[untyped-decorator]
def broadcast_clock() -> int:
    """Beat's periodic broadcast: the server time, to every open page."""
    return turbo.publisher.to_all(services.clock_stream())


@shared_task(**RETRY)  # type: ignore[untyped-decorator]
def push_every_action(session_id: str) -> int:
    """The Actions page: every built-in action, in one message, to one session."""
    return turbo.publisher.to_session(session_id, *services.every_action())
