"""Model broadcasts with a plain SQLAlchemy ``Session`` (no Flask-SQLAlchemy), on PostgreSQL
and on SQLite, against real Redis: inline rendering, the worker's loading through
``TURBO_SQLALCHEMY_SESSION``, and the refusals and errors a misconfigured app gets.

(The Celery path end to end, through a real worker to Chromium, is tests/browser/test_models.py.)
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tests.support import wait_for
from turbocast import (
    CeleryNotConfiguredError,
    Turbo,
    broadcasts,
    dom_id,
    stream_channel,
    suppressing_broadcasts,
)
from turbocast.models import _broadcast_model, _model_name

TEMPLATES = Path(__file__).parent / "model_templates"
NOTES = itertools.count(1)


class Base(DeclarativeBase):
    pass


@broadcasts(lambda note: f"notes:{note.topic}", inline=True)
class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(50))
    text: Mapped[str] = mapped_column(String(200))


@broadcasts(lambda memo: f"notes:{memo.topic}")  # by a worker, and it has no template
class Memo(Base):
    __tablename__ = "memo"
    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(50))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def Session(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[sessionmaker]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/notes.sqlite"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def app(redis_url: str, Session: sessionmaker) -> Flask:
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.config.update(REDIS_URL=redis_url, SECRET_KEY="x", TURBO_SQLALCHEMY_SESSION=Session)
    app.add_template_global(dom_id)
    Turbo(app)
    return app


@pytest.fixture
def listen(redis_url: str) -> Iterator:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)

    def subscribe(topic: str):
        pubsub.subscribe(stream_channel(f"notes:{topic}"))
        wait_for(lambda: pubsub.subscribed, what="the subscription")

        def next_message() -> str:
            message = wait_for(lambda: pubsub.get_message(timeout=0.1), what="a message")
            return message["data"].decode()

        return next_message

    yield subscribe
    pubsub.close()
    client.close()


def test_a_plain_session_broadcasts_inline_create_update_and_destroy(app, Session, listen):
    topic = f"t{next(NOTES)}"
    receive = listen(topic)
    with app.app_context(), Session() as session:
        note = Note(topic=topic, text="hello")
        session.add(note)
        session.commit()
        assert 'action="append" target="notes"' in (created := receive())
        assert f'<li id="note_{note.id}">hello</li>' in created

        note.text = note.text  # no column changed: nothing is sent
        session.commit()
        note.text = "edited"
        session.flush()
        note.text = "edited twice"
        session.commit()
        updated = receive()
        assert f'action="replace" target="note_{note.id}"' in updated
        assert "edited twice" in updated

        session.delete(note)
        session.commit()
        assert f'action="remove" target="note_{note.id}"' in receive()


def test_the_worker_loads_the_instance_through_turbo_sqlalchemy_session(app, Session, listen):
    # What the Celery task runs, called here: it loads the note with the configured factory.
    topic = f"t{next(NOTES)}"
    receive = listen(topic)
    with app.app_context():
        with Session() as session, session.begin():
            note = Note(topic=topic, text="loaded")
            session.add(note)
            session.flush()
            note_id = note.id
        receive()  # the inline create
        _broadcast_model(_model_name(Note), 0, "update", [note_id], [f"notes:{topic}"], "note_x")
    assert "loaded" in receive()


def test_a_worker_model_without_a_celery_app_is_refused_at_the_flush(app, Session):
    with app.app_context(), Session() as session:
        session.add(Memo(topic="refused"))
        with pytest.raises(CeleryNotConfiguredError, match="no Celery app to enqueue on"):
            session.commit()
        session.rollback()
        assert session.query(Memo).filter_by(topic="refused").count() == 0


def test_a_missing_template_is_one_clear_error_in_the_log(app, Session, caplog):
    with app.app_context(), suppressing_broadcasts(), Session() as session, session.begin():
        memo = Memo(topic="untemplated")
        session.add(memo)
        session.flush()
        memo_id = memo.id
    with app.app_context(), caplog.at_level(logging.ERROR, logger="turbocast"):
        sent = _broadcast_model(_model_name(Memo), 0, "create", [memo_id], ["notes:x"], "memo_1")
    assert sent == 0
    assert "no template 'memos/_memo.html' (name one with template=)" in caplog.text
