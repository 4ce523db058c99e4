"""The shop's one page, and buttons that have a Celery worker push to this browser."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

from app import turbo
from turbocast import MIME_TYPE, TurboStream, render_streams, session_id

bp = Blueprint("shop", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


def _queued() -> Response:
    queued = TurboStream("Queued").action("update").target("status")
    return Response(render_streams(queued), mimetype=MIME_TYPE)


@bp.post("/notify")
def notify() -> Response:
    """The shop's own task (workers.notify) pushes a notice."""
    current_app.extensions["celery"].send_task("workers.notify", args=[session_id()])
    return _queued()


@bp.post("/notify-later")
def notify_later() -> Response:
    """turbocast's task renders the shop's template in the worker and pushes it."""
    turbo.to_session_later(
        session_id(), "append", "notices", template="_notice.html", by="turbocast", at="later"
    )
    return _queued()
