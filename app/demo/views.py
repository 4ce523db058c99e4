"""Demo views: one page with notifications, a progress job and a live clock; a second page."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from flask import (
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from app.demo import bp, services
from app.demo.models import Post
from app.extensions import db, turbo
from turbocast import (
    MIME_TYPE,
    InvalidChannelError,
    TurboStream,
    health_view,
    member_dom_id,
    metrics_view,
    presence_target,
    render_stream,
    render_streams,
    rotate_session_id,
    session_id,
    socket_id,
    user_channel,
)

logger = logging.getLogger(__name__)


def _streams_or_redirect(*streams: TurboStream, back: str | None = None) -> BaseResponse:
    # Turbo sends form submissions with this Accept; a browser without JS gets a redirect.
    if request.accept_mimetypes.quality(MIME_TYPE) > 0:
        return Response(render_streams(*streams), mimetype=MIME_TYPE)
    return redirect(back or url_for("demo.index"), code=303)


def _enqueue(task: str, *args: object) -> None:
    # By name: the web process does not import the workers package.
    current_app.extensions["celery"].send_task(task, args=list(args))


@bp.get("/")
def index() -> str:
    return render_template("demo/index.html", now=services.now_text())


@bp.get("/about")
def about() -> str:
    return render_template("demo/about.html", now=services.now_text())


@bp.post("/notify")
def notify() -> BaseResponse:
    """Enqueue a Celery task that renders a notification and sends it to this session."""
    text = request.form.get("text", "").strip()[:200] or "Hello from a Celery worker"
    turbo.to_session_later(
        session_id(),
        "prepend",
        "notifications",
        template="demo/_notification.html",
        text=text,
        sent_at=services.now_text(),
    )
    return _streams_or_redirect(TurboStream.update("notify-status", "Queued — watch the list."))


@bp.post("/jobs")
def start_job() -> BaseResponse:
    """Start the progress job in a worker; its row fills as the worker pushes progress."""
    job_id = secrets.token_hex(4)
    steps = int(current_app.config["DEMO_JOB_STEPS"])
    _enqueue("workers.tasks.run_job", session_id(), job_id, steps)
    return _streams_or_redirect(TurboStream.prepend("jobs", services.job_html(job_id, 0, steps)))


@bp.get("/actions")
def actions() -> str:
    return render_template("demo/actions.html", now=services.now_text())


@bp.post("/actions")
def run_actions() -> BaseResponse:
    """Have a worker push one stream of every action to this session."""
    current_app.extensions["celery"].send_task(
        "workers.tasks.push_every_action", args=[session_id()]
    )
    return _streams_or_redirect()


@turbo.user_loader
def current_user_id() -> str | None:
    """The demo's "authentication": a name kept in the signed session cookie."""
    user = session.get("user")
    return user if isinstance(user, str) else None


@turbo.presence_renderer
def render_presence(stream: str, member: str, joined: bool) -> TurboStream:
    """A board's members: an avatar appended when a user opens the board, removed when
    they leave (their last tab closed, after the grace period)."""
    if joined:
        return render_stream(
            "append", presence_target(stream), template="demo/_member.html", stream=stream,
            member=member,
        )  # fmt: skip
    return TurboStream.remove(member_dom_id(stream, member))


@bp.post("/login")
def login() -> BaseResponse:
    """Sign in under a name; every tab of every browser signed in as it is one user."""
    name = request.form.get("name", "").strip()
    try:
        user_channel(name)  # refuses what cannot be a user id
    except InvalidChannelError:
        abort(400, "a name is 1-128 characters of A-Z a-z 0-9 _ . @ + = -")
    disconnect = _sign_out()  # a change of user: the previous one's sockets close everywhere
    session["user"] = name
    response = redirect(request.referrer or url_for("demo.index"), code=303)
    response.call_on_close(disconnect)
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    """Sign out: this browser's sockets and the user's close (4003) on every web process."""
    response = redirect(request.referrer or url_for("demo.index"), code=303)
    response.call_on_close(_sign_out())
    return response


def _sign_out() -> Callable[[], None]:
    """Give the browser a new identity now; return what closes the old one's sockets.

    The closing runs once the response, with its new cookie, has gone out
    (``call_on_close``): a closed tab reloads at once, and a reload that left before
    the new cookie arrived would render the old identity again.
    """
    user = session.pop("user", None)
    old_sid = session_id()
    rotate_session_id()
    publisher = turbo.publisher

    def disconnect() -> None:
        publisher.disconnect_session(old_sid)
        if isinstance(user, str):
            publisher.disconnect_user(user)

    return disconnect


@bp.post("/me/ping")
def ping_my_tabs() -> BaseResponse:
    """Push to every socket of the signed-in user, on every web process."""
    user = current_user_id()
    if user is None:
        abort(403, "sign in first")
    turbo.to_user(
        user, TurboStream.prepend("user-pings", services.user_ping_html(user, session_id()))
    )
    return _streams_or_redirect()


@bp.post("/tabs/nudge")
def nudge_my_other_tabs() -> BaseResponse:
    """Push to this session's other tabs: the tab that asked (its socket) is left out."""
    note = TurboStream.prepend(
        "tab-nudges",
        Markup('<li class="nudge">Nudged from another tab at {}</li>').format(services.now_text()),
    )
    turbo.to_session(session_id(), note, exclude_socket=socket_id())
    return _streams_or_redirect(TurboStream.update("nudge-status", "Sent to your other tabs."))


@bp.get("/boards/<int:board_id>")
def board(board_id: int) -> str:
    """A named stream: everyone on this board's page sees what is posted to it."""
    board, posts = services.board_page(board_id)
    return render_template("demo/board.html", board=board, posts=posts, now=services.now_text())


@bp.get("/boards/<int:board_id>/feed")
def board_feed(board_id: int) -> str:
    """A board's posts under the layout's stream source, with a second source of its own."""
    board, posts = services.board_page(board_id)
    return render_template(
        "demo/board_feed.html", board=board, posts=posts, now=services.now_text()
    )


@bp.post("/boards/<int:board_id>/messages")
def post_to_board(board_id: int) -> BaseResponse:
    """Save a post; its model broadcast (after the commit, by a worker) shows it everywhere."""
    text = request.form.get("text", "").strip()[:500]
    if not text:
        abort(400, "say something")
    board = services.board_for_change(board_id)
    db.session.add(Post(board=board, text=text, author=current_user_id() or "someone"))
    db.session.commit()
    return _streams_or_redirect(back=url_for("demo.board", board_id=board_id))


@bp.post("/boards/<int:board_id>/posts/<int:post_id>/delete")
def delete_post(board_id: int, post_id: int) -> BaseResponse:
    """Delete a post; its model broadcast removes it from every page of the board."""
    post = db.session.get(Post, post_id)
    if post is None or post.board_id != board_id:
        abort(404)
    db.session.delete(post)
    db.session.commit()
    return _streams_or_redirect(back=url_for("demo.board", board_id=board_id))


@bp.post("/boards/<int:board_id>/rename")
def rename_board(board_id: int) -> BaseResponse:
    """Rename a board: every other page of it refreshes; this one updates its title."""
    name = request.form.get("name", "").strip()[:100]
    if not name:
        abort(400, "a board needs a name")
    board = services.board_for_change(board_id)
    board.name = name
    db.session.commit()
    return _streams_or_redirect(
        TurboStream.update("board-name", name), back=url_for("demo.board", board_id=board_id)
    )


@bp.post("/boards/<int:board_id>/refresh")
def refresh_board(board_id: int) -> BaseResponse:
    """Ask every page of this board to refresh: one refresh per window, whoever asks.

    The tab whose Turbo fetch this is (its ``X-Turbo-Request-Id``) skips that refresh.
    """
    turbo.refresh_stream(f"board:{board_id}")
    return _streams_or_redirect()


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """turbocast's health check: 200 when Redis answers, this process's relay is subscribed
    and its heartbeat beats; 503 with the reasons when not (load balancers and compose)."""
    return health_view()


@bp.get("/metrics")
def metrics() -> Response:
    """turbocast's Prometheus metrics, every gunicorn worker's (``make run`` sets
    ``PROMETHEUS_MULTIPROC_DIR`` for the web process). A real app keeps this off the public
    internet: its proxy answers it only from the monitoring network."""
    return metrics_view()
