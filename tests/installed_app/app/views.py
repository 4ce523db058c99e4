"""The shop's one page, and a button that has a Celery task push to this browser."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

from turbocast import MIME_TYPE, TurboStream, render_streams, session_id

bp = Blueprint("shop", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.post("/notify")
def notify() -> Response:
    current_app.extensions["celery"].send_task("workers.notify", args=[session_id()])
    queued = TurboStream("Queued").action("update").target("status")
    return Response(render_streams(queued), mimetype=MIME_TYPE)
