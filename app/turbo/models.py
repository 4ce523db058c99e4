"""Model broadcasts: a SQLAlchemy model's committed changes, pushed to the pages of its streams.

The counterpart of turbo-rails' ``broadcasts_to`` and ``broadcasts_refreshes_to``::

    from turbocast import broadcasts, broadcasts_refreshes

    @broadcasts(lambda post: f"board:{post.board_id}")
    class Post(db.Model): ...          # created: appended to #posts; updated: #post_12
                                       # replaced; deleted: #post_12 removed
    @broadcasts_refreshes(lambda board: f"board:{board.id}")
    class Board(db.Model): ...         # any change: the board's pages refresh (debounced)

How it works. Listeners on SQLAlchemy's ``Session`` class (so every session: a plain
one, a ``sessionmaker``'s, Flask-SQLAlchemy's) record at each flush what happened to
each declared instance, in ``Session.info``, under the transaction or savepoint that
flushed it (:mod:`turbocast.changes` merges repeated flushes into one change). A
released savepoint hands its changes to the enclosing transaction; one rolled back drops
them; the outermost commit sends them, and a rollback sends nothing.

Sending: a ``broadcasts_refreshes`` declaration calls ``turbo.refresh_stream`` in the committing
process. A ``broadcasts`` declaration enqueues :data:`TASK_NAME` on the app's Celery app
with the class, the primary key and the streams; the worker loads the instance again
(Flask-SQLAlchemy's ``db.session``, or ``TURBO_SQLALCHEMY_SESSION``) and renders its
template. ``inline=True`` renders in the committing process instead. A removal needs
no instance: its dom id is taken at the flush.

SQLAlchemy is the extra ``turbocast[sqlalchemy]``; nothing else in turbocast imports
this module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, has_app_context, render_template
from jinja2 import TemplateNotFound
from markupsafe import Markup
from werkzeug.utils import import_string

from .changes import CREATE, DESTROY, KINDS, UPDATE, Changes, Kind
from .errors import InvalidStreamError, TurboError
from .extension import _state
from .streams import TurboStream

try:
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction
except ModuleNotFoundError as error:  # pragma: no cover - the install hint
    raise ModuleNotFoundError(
        "turbocast.models needs SQLAlchemy 2: pip install 'turbocast[sqlalchemy]'",
        name="sqlalchemy",
    ) from error

try:
    from celery import shared_task
except ModuleNotFoundError:
    shared_task = None

logger = logging.getLogger("turbocast")

M = TypeVar("M")

#: The registered name of the task that renders a changed instance and publishes it.
TASK_NAME = "turbocast.broadcast_model"

#: What ``to=`` may be: a stream name, or a function of the instance giving one or several.
StreamsOf = str | Callable[[Any], "str | Iterable[str]"]

# Keys of Session.info.
_PENDING = "turbocast.pending"  # {transaction or savepoint: Changes}
_COMMITTED = "turbocast.committed"  # [Changes] committed, sent once the transaction closes
_DELETING = "turbocast.deleting"  # {id(instance): Snapshot} of deletions, taken before a flush


@dataclass(frozen=True)
class Declaration:
    """How one model's changes reach pages: made by :func:`broadcasts` or its refresh twin."""

    model: type[Any]
    streams_of: StreamsOf
    refresh: bool
    on: frozenset[Kind]
    name: str
    inserts_by: str
    target: str
    template: str
    inline: bool

    def streams(self, instance: Any) -> tuple[str, ...]:
        """The names of the streams an instance's changes go to."""
        found = self.streams_of(instance) if callable(self.streams_of) else self.streams_of
        return (found,) if isinstance(found, str) else tuple(found)


@dataclass(frozen=True)
class Snapshot:
    """What sending a change needs of its instance, taken at its latest flush."""

    pk: tuple[Any, ...]
    dom_id: str
    #: Each declaration's stream names, in the order of the model's declarations.
    streams: tuple[tuple[str, ...], ...]


#: Declared models, and by the name a task carries.
_DECLARED: dict[type[Any], list[Declaration]] = {}
_BY_NAME: dict[str, type[Any]] = {}

_suppressed: ContextVar[tuple[type[Any], ...]] = ContextVar("turbocast_suppressed", default=())


def singular_name(model: type[Any]) -> str:
    """A model's name in templates and dom ids: its class name in snake case (``BlogPost``:
    ``blog_post``).

    :param model: the model class.
    """
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", model.__name__).lower()


def dom_id(instance: Any, prefix: str | None = None) -> str:
    """The id of an instance's element: ``post_12`` (``new_post`` before it has a key).

    The name is the model's declared ``name=``, else its class name in snake case.

    The one turbo-rails' ``dom_id`` gives; a template renders it as the element's id, and
    updates and removals aim at it. Register it for templates with
    ``app.add_template_global(dom_id)``.

    :param instance: a mapped instance.
    :param prefix: put in front, as in ``edit_post_12``.
    """
    declarations = _declarations(type(instance))
    name = declarations[0].name if declarations else singular_name(type(instance))
    pk = _primary_key(instance)
    base = f"{name}_{'_'.join(str(v) for v in pk)}" if pk else f"new_{name}"
    return f"{prefix}_{base}" if prefix else base


def broadcasts(
    to: StreamsOf,
    *,
    on: Iterable[Kind] = KINDS,
    inserts_by: str = "append",
    target: str | None = None,
    template: str | None = None,
    name: str | None = None,
    inline: bool = False,
) -> Callable[[type[M]], type[M]]:
    """Declare that a model's committed changes are rendered and pushed to its streams.

    A created instance is appended (or prepended) to ``target``; an updated one replaces
    its element, ``dom_id(instance)``; a deleted one's element is removed. Each is
    rendered from ``template`` with the instance as ``name``, by a Celery worker::

        @broadcasts(lambda post: f"board:{post.board_id}", inserts_by="prepend")
        class Post(db.Model): ...

    :param to: the stream name, or a function of the instance giving one or several.
    :param on: which changes to send: ``"create"``, ``"update"``, ``"destroy"``.
    :param inserts_by: ``"append"`` or ``"prepend"``, for created instances.
    :param target: the id of the list created instances go into (default: the plural,
        ``posts``).
    :param template: the template of one instance (default: ``posts/_post.html``).
    :param name: the instance's name in the template and in dom ids (default: the class
        name in snake case, ``post``; the plural adds an ``s``).
    :param inline: render and send in the committing process instead of a Celery task.
    :raises InvalidStreamError: ``inserts_by`` is neither append nor prepend.
    :raises TurboError: an unknown kind in ``on``, or a class SQLAlchemy does not map.
    """
    if inserts_by not in ("append", "prepend"):
        raise InvalidStreamError(f"inserts_by must be 'append' or 'prepend', not {inserts_by!r}")
    return _declare(to, False, on, inserts_by, target, template, name, inline)


def broadcasts_refreshes(
    to: StreamsOf, *, on: Iterable[Kind] = KINDS
) -> Callable[[type[M]], type[M]]:
    """Declare that any committed change of a model refreshes the pages of its streams.

    Each commit calls ``turbo.refresh_stream(name)`` once per stream, in the committing
    process: debounced, and not back to the page whose request made the change::

        @broadcasts_refreshes(lambda board: f"board:{board.id}")
        class Board(db.Model): ...

    :param to: the stream name, or a function of the instance giving one or several.
    :param on: which changes refresh: ``"create"``, ``"update"``, ``"destroy"``.
    :raises TurboError: an unknown kind in ``on``, or a class SQLAlchemy does not map.
    """
    return _declare(to, True, on, "append", None, None, None, True)


def _declare(
    to: StreamsOf,
    refresh: bool,
    on: Iterable[Kind],
    inserts_by: str,
    target: str | None,
    template: str | None,
    name: str | None,
    inline: bool,
) -> Callable[[type[M]], type[M]]:
    kinds = frozenset(on)
    if not kinds <= KINDS:
        raise TurboError(f"on= takes {sorted(KINDS)}, not {sorted(kinds - KINDS)}")

    def declare(model: type[M]) -> type[M]:
        try:
            sqlalchemy.inspect(model)
        except sqlalchemy.exc.NoInspectionAvailable:
            raise TurboError(f"{model.__name__} is not a SQLAlchemy mapped class") from None
        singular = name or singular_name(model)
        plural = f"{singular}s"
        declaration = Declaration(
            model=model,
            streams_of=to,
            refresh=refresh,
            on=kinds,
            name=singular,
            inserts_by=inserts_by,
            target=target or plural,
            template=template or f"{plural}/_{singular}.html",
            inline=inline,
        )
        _DECLARED.setdefault(model, []).append(declaration)
        _BY_NAME[_model_name(model)] = model
        return model

    return declare


@contextmanager
def suppressing_broadcasts(*models: type[Any]) -> Iterator[None]:
    """Send nothing for changes flushed or committed inside the block (bulk imports, tests).

    :param models: only these models (and their subclasses); none: every model.
    """
    token = _suppressed.set((*_suppressed.get(), *(models or (object,))))
    try:
        yield
    finally:
        _suppressed.reset(token)


def _is_suppressed(model: type[Any]) -> bool:
    return any(issubclass(model, m) for m in _suppressed.get())


def _model_name(model: type[Any]) -> str:
    return f"{model.__module__}:{model.__qualname__}"


def _declarations(model: type[Any]) -> list[Declaration]:
    for cls in model.__mro__:
        if cls in _DECLARED:
            return _DECLARED[cls]
    return []


def _primary_key(instance: Any) -> tuple[Any, ...]:
    state = sqlalchemy.inspect(instance)
    if state.identity is not None:
        return tuple(state.identity)
    pk = tuple(state.mapper.primary_key_from_instance(instance))
    return () if any(v is None for v in pk) else pk


def _snapshot(instance: Any, declarations: list[Declaration]) -> Snapshot:
    return Snapshot(
        pk=_primary_key(instance),
        dom_id=dom_id(instance),
        streams=tuple(d.streams(instance) for d in declarations),
    )


# --- The session's side: record at each flush, settle at each commit and rollback ---------


def _before_flush(session: Session, _context: UOWTransaction, _instances: object) -> None:
    # A deleted instance may be expired (committed earlier); after the flush its row is
    # gone and cannot load: take what its removal needs while it still can.
    deleting = {}
    for instance in session.deleted:
        declarations = _declarations(type(instance))
        if declarations and not _is_suppressed(type(instance)):
            deleting[id(instance)] = _snapshot(instance, declarations)
    if deleting:
        session.info[_DELETING] = deleting


def _after_flush(session: Session, _context: UOWTransaction) -> None:
    # new, dirty and deleted still hold what this flush wrote (SQLAlchemy's after_flush).
    deleting: dict[int, Snapshot] = session.info.pop(_DELETING, {})
    if not _DECLARED:
        return
    found: list[tuple[tuple[str, tuple[Any, ...]], Kind, Snapshot, list[Declaration]]] = []
    for kind, instances in (
        (CREATE, session.new),
        (UPDATE, session.dirty),
        (DESTROY, session.deleted),
    ):
        for instance in instances:
            model = type(instance)
            declarations = _declarations(model)
            if not declarations or _is_suppressed(model):
                continue
            if kind == UPDATE and not session.is_modified(instance, include_collections=False):
                continue
            snapshot = deleting.get(id(instance)) if kind == DESTROY else None
            snapshot = snapshot or _snapshot(instance, declarations)
            found.append(((_model_name(model), snapshot.pk), kind, snapshot, declarations))
    if not found:
        return
    _check_ready([d for *_, declarations in found for d in declarations])
    transaction = session.get_nested_transaction() or session.get_transaction()
    pending: dict[SessionTransaction, Changes[Any, Snapshot]] = session.info.setdefault(
        _PENDING, {}
    )
    changes = pending.setdefault(transaction, Changes())  # type: ignore[arg-type]
    for key, kind, snapshot, _ in found:
        changes.record(key, kind, snapshot)


def _after_commit(session: Session) -> None:
    pending: dict[SessionTransaction, Changes[Any, Snapshot]] = session.info.get(_PENDING, {})
    if not pending:
        return
    savepoint = session.get_nested_transaction()
    if savepoint is not None:
        # A released savepoint: its changes now belong to the transaction around it.
        changes = pending.pop(savepoint, None)
        if changes and savepoint.parent is not None:
            pending.setdefault(savepoint.parent, Changes()).absorb(changes)
        return
    root = session.get_transaction()
    changes = pending.pop(root, None) if root is not None else None
    if changes:
        # Sent once the transaction has closed.
        session.info.setdefault(_COMMITTED, []).append(changes)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    pending: dict[SessionTransaction, Changes[Any, Snapshot]] = session.info.get(_PENDING, {})
    # Still pending when it ends: it was rolled back (or closed) without a commit.
    pending.pop(transaction, None)
    if transaction.parent is not None:
        return
    session.info.pop(_PENDING, None)
    for changes in session.info.pop(_COMMITTED, []):
        _send(session, changes)


for _name, _listener in (
    ("before_flush", _before_flush),
    ("after_flush", _after_flush),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
):
    if not event.contains(Session, _name, _listener):
        event.listen(Session, _name, _listener)


def _check_ready(declarations: list[Declaration]) -> None:
    """Refuse, at the flush, what could not be sent after the commit."""
    if not has_app_context():
        raise TurboError(
            "a model with broadcasts changed outside a Flask app context: run it inside "
            "app.app_context(), or inside suppressing_broadcasts()"
        )
    state = _state()
    if any(not d.inline for d in declarations):
        from .tasks import _require_celery, celery_app_of

        _require_celery()
        celery_app_of(state)  # raises CeleryNotConfiguredError
        _session_source()  # a worker needs a session to load the instance with


# --- Sending --------------------------------------------------------------------------


def _send(session: Session, changes: Changes[Any, Snapshot]) -> None:
    """Send one committed transaction's changes; log, never raise: the data is committed."""
    if not has_app_context():
        logger.error("model broadcasts dropped: the commit happened outside a Flask app context")
        return
    refreshed: set[str] = set()
    for (model_name, pk), change in changes.items():
        model = _BY_NAME[model_name]
        if _is_suppressed(model):
            continue
        for index, declaration in enumerate(_declarations(model)):
            if change.kind not in declaration.on:
                continue
            streams = change.snapshot.streams[index]
            try:
                if declaration.refresh:
                    for name in streams:
                        if name not in refreshed:
                            refreshed.add(name)
                            _refresh(name)
                elif declaration.inline:
                    # A session of its own: the committing one may not begin again yet
                    # (inside `with session.begin():`, its transaction is still closing).
                    with Session(bind=session.get_bind(declaration.model)) as fresh:
                        _deliver(
                            declaration, change.kind, pk, streams, change.snapshot.dom_id, fresh
                        )
                else:
                    _enqueue(model_name, index, change.kind, pk, streams, change.snapshot.dom_id)
            except Exception:
                logger.exception(
                    "model broadcast of %s %s failed",
                    model.__name__,
                    change.kind,
                    extra={"turbo_model": model_name, "turbo_pk": pk},
                )


def _refresh(name: str) -> None:
    # In the committing thread: a view's refresh carries its request's X-Turbo-Request-Id.
    _state().turbo.refresh_stream(name)


def _enqueue(
    model_name: str,
    index: int,
    kind: Kind,
    pk: tuple[Any, ...],
    streams: tuple[str, ...],
    dom_id: str,
) -> None:
    from .tasks import celery_app_of

    args = [model_name, index, kind, list(pk), list(streams), dom_id]
    celery_app_of(_state()).send_task(TASK_NAME, args=args)


def _deliver(
    declaration: Declaration,
    kind: Kind,
    pk: tuple[Any, ...],
    streams: Iterable[str],
    element_id: str,
    session: Session,
) -> int:
    """Render one change and publish it to its streams; returns how many processes got it."""
    if kind == DESTROY:
        stream = TurboStream.remove(element_id)
    else:
        instance = session.get(declaration.model, pk)
        if instance is None:
            logger.info(
                "model broadcast of %s %s skipped: deleted since",
                declaration.model.__name__,
                pk,
            )
            return 0
        try:
            html = render_template(declaration.template, **{declaration.name: instance})
        except TemplateNotFound:
            logger.error(
                "model broadcast of %s %s: no template %r (name one with template=)",
                declaration.model.__name__,
                pk,
                declaration.template,
            )
            return 0
        content = Markup(html)  # noqa: S704 - Jinja2 autoescapes
        if kind == UPDATE:
            stream = TurboStream.replace(element_id, content)
        else:
            insert = (
                TurboStream.prepend if declaration.inserts_by == "prepend" else TurboStream.append
            )
            stream = insert(declaration.target, content)
    publisher = _state().publisher
    return sum(publisher.to_stream(name, stream) for name in streams)


def _session_source() -> Callable[[], AbstractContextManager[Session]]:
    """Where a worker gets a session: ``TURBO_SQLALCHEMY_SESSION``, else Flask-SQLAlchemy's."""
    factory = current_app.config.get("TURBO_SQLALCHEMY_SESSION")
    if isinstance(factory, str):
        factory = import_string(factory)
    if factory is not None:
        if not callable(factory):
            raise TurboError(
                "TURBO_SQLALCHEMY_SESSION must be a session factory or its import path"
            )
        return factory  # type: ignore[no-any-return]  # a sessionmaker: `with factory() as s`
    db = current_app.extensions.get("sqlalchemy")
    if db is not None:
        # Flask-SQLAlchemy's session lives as long as the task's app context.
        return lambda: nullcontext(db.session())
    raise TurboError(
        "model broadcasts render in a Celery worker, which loads the instance again: use "
        "Flask-SQLAlchemy, or set TURBO_SQLALCHEMY_SESSION to your sessionmaker (or its "
        "import path, 'yourapp.db:Session'), or declare the model with inline=True"
    )


def _broadcast_model(
    model_name: str, index: int, kind: Kind, pk: list[Any], streams: list[str], element_id: str
) -> int:
    """Load a changed instance, render it and publish it (runs in a worker)."""
    model = _BY_NAME.get(model_name)
    if model is None:
        logger.error(
            "model broadcast of %s: the worker knows no such declared model (import your "
            "models in the worker's app)",
            model_name,
        )
        return 0
    declaration = _declarations(model)[index]
    with _session_source()() as session:
        return _deliver(declaration, kind, tuple(pk), streams, element_id, session)


if shared_task is not None:
    #: The task; enqueued by name on the app's own Celery app, never with ``.delay()``.
    from .tasks import RETRY_OPTIONS

    broadcast_model = shared_task(name=TASK_NAME, **RETRY_OPTIONS)(_broadcast_model)
