"""Streams that a Celery worker renders and sends: like turbo-rails' ``broadcast_*_later``.

A view calls ``turbo.to_session_later``, ``to_user_later``, ``to_stream_later`` or
``to_all_later`` (:func:`send_later` and :func:`broadcast_later` are the first and the
last) and returns at once; a worker renders the template (with the same Jinja2
templates the views use, inside the Flask app context that the worker's ``FlaskTask``
provides) and publishes the stream. The template context travels through the broker,
so pass ids and plain values (JSON), not objects.

Which Celery app: the one given to ``Turbo(app, celery=...)`` or
``init_app(app, celery=...)``, else ``app.extensions["celery"]`` (Flask's Celery
pattern keeps it there), looked up at each call. Never Celery's default or current
app: in a web process that did not make its Celery app the default, that one sends
to ``amqp://guest@localhost//`` and the view would answer 200 for a message nobody
gets. With none, each call raises :class:`CeleryNotConfiguredError`; a bad id, name,
action, target or method raises too; all in the view, before anything is enqueued.

How it is enqueued, and run:

- The web process sends by name, ``celery_app.send_task(TASK_NAME, ...)``: on that
  app's broker, whether or not the task is registered there, and without finalizing
  the app.
- The worker must know the task. ``publish_template`` is a ``shared_task``: every
  Celery app of a process that imported this module gets it. ``init_app`` imports this
  module when it is handed a Celery app (or finds ``app.extensions["celery"]``), so a
  worker whose Celery app comes from the Flask app factory has the task; a worker
  whose Celery app reaches ``app.extensions`` only after ``init_app`` lists it:
  ``include=["turbocast.tasks"]``.

Celery is the extra ``turbocast[celery]``: without it this module still imports,
and only the ``*_later`` calls fail, with the install hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import current_app
from markupsafe import Markup

from .channels import broadcast_channel, channel_for
from .errors import (
    CeleryNotConfiguredError,
    MessageTooLargeError,
    PublishError,
)
from .extension import TurboState, _state
from .publisher import check_exclude, check_exclude_socket
from .rendering import build_stream, render_stream

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

try:
    from celery import shared_task
except ModuleNotFoundError as error:
    _celery_missing: ModuleNotFoundError | None = error
else:
    _celery_missing = None

#: The registered name of the task that renders and publishes.
TASK_NAME = "turbocast.publish_template"


def _publish_template(
    channel: str,
    action: str,
    target: str | None,
    targets: str | None,
    method: str | None,
    template: str,
    context: dict[str, Any],
    exclude: str | None = None,
    exclude_socket: str | None = None,
) -> int:
    """Render ``template`` into a stream and publish it on ``channel`` (runs in a worker).

    :param channel: the channel, from :mod:`turbocast.channels`.
    :param action: the Turbo Stream action.
    :param target: the target element's id, or ``None`` with ``targets``.
    :param targets: a CSS selector, or ``None``.
    :param method: ``"morph"`` or ``None``.
    :param template: the Jinja2 template that renders the content.
    :param context: the template's variables.
    :param exclude: a session id whose sockets must not get it.
    :param exclude_socket: a socket id (``socket_id()``) that must not get it.
    """
    stream = render_stream(action, target, template=template, targets=targets, method=method,
                           **context)  # fmt: skip
    publisher = _state().publisher
    return publisher.publish(channel, stream, exclude=exclude, exclude_socket=exclude_socket)


#: How each of turbocast's tasks retries a publish Redis did not take: with backoff,
#: up to 8 times; a message too large is never retried.
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": (PublishError,),
    "dont_autoretry_for": (MessageTooLargeError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 8,
    "ignore_result": True,
}

if _celery_missing is None:
    #: The task itself; only with Celery installed. Never ``.delay()`` it: that sends on
    #: Celery's current app. :func:`enqueue` sends on the app's own.
    publish_template = shared_task(name=TASK_NAME, **RETRY_OPTIONS)(_publish_template)


def _require_celery() -> None:
    if _celery_missing is not None:
        raise ModuleNotFoundError(
            "send_later(), broadcast_later() and the *_later methods need Celery: "
            "pip install 'turbocast[celery]'",
            name="celery",
        ) from _celery_missing


def celery_app_of(state: TurboState) -> Celery:
    """The Celery app that ``*_later`` enqueues on for the current Flask app.

    :param state: the current app's turbocast state.
    :raises CeleryNotConfiguredError: neither ``celery=`` nor ``app.extensions["celery"]``.
    """
    celery_app = state.celery
    if celery_app is None:
        celery_app = current_app.extensions.get("celery")
    if celery_app is None or not callable(getattr(celery_app, "send_task", None)):
        raise CeleryNotConfiguredError(
            f"no Celery app to enqueue on for Flask app {current_app.name!r}: pass yours, "
            "Turbo(app, celery=celery_app) or turbo.init_app(app, celery=celery_app), or "
            'keep it in app.extensions["celery"] (Flask\'s Celery pattern). turbocast never '
            "uses Celery's default app."
        )
    return celery_app


def enqueue(
    channel_of: Callable[[str], str],
    action: str,
    target: str | None,
    targets: str | None,
    method: str | None,
    template: str,
    context: dict[str, Any],
    exclude: str | None = None,
    exclude_socket: str | None = None,
) -> AsyncResult:
    """Check a stream in the caller, then enqueue it for a worker to render and publish.

    What every ``*_later`` call does; nothing is enqueued unless every check passes.

    :param channel_of: builds the audience's channel from ``TURBO_CHANNEL_PREFIX``
        (a function of :mod:`turbocast.channels`).
    :param action: the Turbo Stream action.
    :param target: the target element's id, or ``None`` with ``targets``.
    :param targets: a CSS selector, or ``None``.
    :param method: ``"morph"`` or ``None``.
    :param template: the Jinja2 template that renders the content, in the worker.
    :param context: the template's variables (JSON values).
    :param exclude: a session id whose sockets must not get it.
    :param exclude_socket: a socket id (``socket_id()``) that must not get it.
    :raises ModuleNotFoundError: Celery is not installed (``turbocast[celery]``).
    :raises CeleryNotConfiguredError: no Celery app to enqueue on.
    :raises InvalidChannelError: an id or a name that cannot name a channel, an
        ``exclude`` that is not a session id, or an ``exclude_socket`` not a socket id.
    :raises InvalidStreamError: a bad action, target or method.
    """
    _require_celery()
    state = _state()
    celery_app = celery_app_of(state)
    channel = channel_of(str(state.config["TURBO_CHANNEL_PREFIX"]))
    check_exclude(exclude)
    check_exclude_socket(exclude_socket)
    # Refuse a bad action, target or method now, in the view, not later in a worker.
    build_stream(action, target, targets, method, Markup("")).render()
    args: list[Any] = [channel, action, target, targets, method, template, context]
    if exclude is not None:
        args.append(exclude)  # (only then: a worker of an older release takes seven)
    # A keyword, and only when given: what an older worker takes is unchanged otherwise.
    kwargs = {"exclude_socket": exclude_socket} if exclude_socket is not None else None
    return celery_app.send_task(TASK_NAME, args=args, kwargs=kwargs)


def send_later(
    session_id: str,
    action: str,
    target: str | None = None,
    *,
    template: str,
    targets: str | None = None,
    method: str | None = None,
    exclude: str | None = None,
    exclude_socket: str | None = None,
    **context: Any,
) -> AsyncResult:
    """Have a worker render ``template`` and send it to one session; returns at once.

    The same as ``turbo.to_session_later(...)``. Example, in a view::

        send_later(session_id(), "prepend", "notifications",
                   template="notification.html", text="Saved")

    :param session_id: the session to send to (``session_id()`` in a view).
    :param action: the Turbo Stream action (append, replace, ...).
    :param target: the target element's id (or ``targets=``).
    :param template: the Jinja2 template that renders the content.
    :param targets: a CSS selector instead of ``target``.
    :param method: ``"morph"`` for replace and update.
    :param exclude: a session id whose sockets must not get it.
    :param exclude_socket: a socket id (``socket_id()``) that must not get it.
    :param context: the template's variables (JSON values: ids, not objects).
    :raises CeleryNotConfiguredError: no Celery app to enqueue on.
    :raises InvalidChannelError: a malformed session id.
    :raises InvalidStreamError: a bad action, target or method.
    :raises ModuleNotFoundError: Celery is not installed (``turbocast[celery]``).
    """

    def channel(prefix: str) -> str:
        return channel_for(session_id, prefix)

    return enqueue(
        channel, action, target, targets, method, template, context, exclude, exclude_socket
    )


def broadcast_later(
    action: str,
    target: str | None = None,
    *,
    template: str,
    targets: str | None = None,
    method: str | None = None,
    exclude: str | None = None,
    exclude_socket: str | None = None,
    **context: Any,
) -> AsyncResult:
    """Have a worker render ``template`` and send it to every socket; returns at once.

    The same as ``turbo.to_all_later(...)``.

    :param action: the Turbo Stream action.
    :param target: the target element's id (or ``targets=``).
    :param template: the Jinja2 template that renders the content.
    :param targets: a CSS selector instead of ``target``.
    :param method: ``"morph"`` for replace and update.
    :param exclude: a session id whose sockets must not get it.
    :param exclude_socket: a socket id (``socket_id()``) that must not get it.
    :param context: the template's variables (JSON values).
    :raises CeleryNotConfiguredError: no Celery app to enqueue on.
    :raises InvalidStreamError: a bad action, target or method.
    :raises ModuleNotFoundError: Celery is not installed (``turbocast[celery]``).
    """
    return enqueue(
        broadcast_channel,
        action,
        target,
        targets,
        method,
        template,
        context,
        exclude,
        exclude_socket,
    )
