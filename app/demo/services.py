"""What the demo shows, as Turbo Streams: shared by the views and the Celery tasks.

Everything renders from app/templates, so a page and a push look the same.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import render_template
from markupsafe import Markup
from sqlalchemy.dialects import postgresql, sqlite

from app.demo.models import Board, Post
from app.extensions import db
from turbocast import Publisher, TurboStream


def _html(template: str, **context: object) -> Markup:
    return Markup(render_template(template, **context))  # noqa: S704 - autoescaped template


def now_text() -> str:
    """The current time as the demo shows it (UTC)."""
    return datetime.now(UTC).strftime("%H:%M:%S")


def clock_stream() -> TurboStream:
    """The live clock, for everyone."""
    return TurboStream.update("clock", _html("demo/_clock.html", now=now_text()))


def job_html(job_id: str, done: int, steps: int, result: str | None = None) -> Markup:
    """One progress job's row (``#job-<id>``)."""
    return _html("demo/_job.html", job_id=job_id, done=done, steps=steps, result=result)


def job_stream(job_id: str, done: int, steps: int, result: str | None = None) -> TurboStream:
    """One progress job's row, replaced as it advances."""
    return TurboStream.replace(f"job-{job_id}", job_html(job_id, done, steps, result))


def run_job(publisher: Publisher, session_id: str, job_id: str, steps: int, pause: float) -> str:
    """A long job that pushes its progress after every step, then its result.

    :param publisher: where progress goes.
    :param session_id: the session that started the job.
    :param job_id: the job's id (its row is ``#job-<id>``).
    :param steps: how many steps the job has.
    :param pause: seconds of pretend work per step.
    """
    total = 0
    for step in range(1, steps + 1):
        time.sleep(pause)  # stands in for real work
        total += step * step
        publisher.to_session(session_id, job_stream(job_id, step, steps))
    result = f"sum of squares 1..{steps} = {total}"
    publisher.to_session(session_id, job_stream(job_id, steps, steps, result=result))
    return result


def user_ping_html(user: str, from_session: str) -> Markup:
    """A line for every tab of one user."""
    return _html("demo/_user_ping.html", user=user, origin=from_session[:6], at=now_text())


def board_page(board_id: int) -> tuple[Board, list[Post]]:
    """A board and its posts; a board nobody posted to yet shows under its default name.

    :param board_id: the board's number, from its URL.
    """
    board = db.session.get(Board, board_id)
    if board is None:
        return Board(id=board_id, name=default_board_name(board_id)), []
    return board, list(board.posts)


def default_board_name(board_id: int) -> str:
    return f"Board {board_id}"


def board_for_change(board_id: int) -> Board:
    """The board, made on its first change; safe when two processes make it at once.

    :param board_id: the board's number, from its URL.
    """
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # The board's creation is no news to its pages: a Core insert, which broadcasts nothing.
    db.session.execute(
        insert(Board)
        .values(id=board_id, name=default_board_name(board_id))
        .on_conflict_do_nothing()
    )
    return db.session.get_one(Board, board_id)


def every_action() -> list[TurboStream]:
    """One stream of every built-in action, aimed at the boxes of the Actions page."""
    return [
        TurboStream.append("append-box", Markup('<p class="appended">appended</p>')),
        TurboStream.prepend("prepend-box", Markup('<p class="prepended">prepended</p>')),
        TurboStream.replace(
            "replace-box", Markup('<div id="replace-box" class="replaced">replaced</div>')
        ),
        TurboStream.update("update-box", Markup('<p class="updated">updated</p>')),
        TurboStream.remove("remove-box"),
        TurboStream.before("before-box", Markup('<p class="inserted-before">inserted before</p>')),
        TurboStream.after("after-box", Markup('<p class="inserted-after">inserted after</p>')),
        TurboStream.replace(
            "morph-replace-box",
            Markup(
                '<div id="morph-replace-box" class="morph morphed"><p>morphed</p>'
                '<input id="morph-replace-input" value=""></div>'
            ),
            method="morph",
        ),
        TurboStream.update("morph-update-box", Markup("<p>morphed inside</p>"), method="morph"),
        TurboStream.update(content=Markup("<b>many</b>"), targets="#many-boxes li.many"),
    ]
