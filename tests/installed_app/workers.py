"""The shop's Celery app: ``celery -A workers worker`` and ``celery -A workers beat``."""

from __future__ import annotations

import datetime

from flask import render_template
from markupsafe import Markup

from app import create_app, turbo
from turbocast import TurboStream

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
celery_app.conf.beat_schedule = {
    "tick": {
        "task": "workers.tick",
        "schedule": float(flask_app.config["TICK_SECONDS"]),
        "options": {"expires": float(flask_app.config["TICK_SECONDS"])},
    },
}


def _now() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S.%f")


@celery_app.task
def notify(session_id: str) -> int:
    """Push a notice to one browser session."""
    html = Markup(render_template("_notice.html", by="a Celery task", at=_now()))  # noqa: S704 - autoescaped
    return turbo.to_session(session_id, TurboStream(html).action("append").target("notices"))


@celery_app.task
def tick() -> int:
    """Beat's periodic push, to every open page."""
    html = Markup(render_template("_tick.html", at=_now()))  # noqa: S704 - autoescaped
    return turbo.to_all(TurboStream(html).action("update").target("tick"))
