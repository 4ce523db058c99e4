"""Streams that a Celery worker renders and sends: like turbo-rails' ``broadcast_*_later``.

A view calls :func:`send_later` or :func:`broadcast_later` and returns at once;
a worker renders the template (with the same Jinja2 templates the views use,
inside the Flask app context that the worker's ``FlaskTask`` provides) and
publishes the stream. The template context travels through the broker, so pass
ids and plain values (JSON), not objects.

Celery is the extra ``turbocast[celery]``: without it this module still imports,
and only :func:`send_later` and :func:`broadcast_later` fail, with the install hint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import render_template
from markupsafe import Markup

from .channels import broadcast_channel, channel_for
from .errors import InvalidStreamError, MessageTooLargeError, PublishError
from .extension import _state
from .streams import TurboStream

if TYPE_CHECKING:
    from celery.result import AsyncResult

try:
    from celery import shared_task
except ModuleNotFoundError as error:
    _celery_missing: ModuleNotFoundError | None = error
else:
    _celery_missing = None

#: The registered name of the task; workers must import this module (``include``).
TASK_NAME = "turbocast.publish_template"


def _build(
    action: str,
    target: str | None,
    targets: str | None,
    method: str | None,
    content: Markup,
) -> TurboStream:
    stream = TurboStream(content).action(action)
    stream = stream.targets(targets) if targets is not None else stream.target(target or "")
    if method is not None:
        stream = stream.method(method)
    return stream


def _publish_template(
    channel: str,
    action: str,
    target: str | None,
    targets: str | None,
    method: str | None,
    template: str,
    context: dict[str, Any],
) -> int:
    """Render ``template`` into a stream and publish it on ``channel`` (runs in a worker).

    :param channel: the channel, from :mod:`turbocast.channels`.
    :param action: the Turbo Stream action.
    :param target: the target element's id, or ``None`` with ``targets``.
    :param targets: a CSS selector, or ``None``.
    :param method: ``"morph"`` or ``None``.
    :param template: the Jinja2 template that renders the content.
    :param context: the template's variables.
    """
    html = Markup(render_template(template, **context))  # noqa: S704 - Jinja2 autoescapes
    stream = _build(action, target, targets, method, html)
    return _state().publisher.publish(channel, stream)


if _celery_missing is None:
    #: The task itself; only with Celery installed.
    publish_template = shared_task(
        name=TASK_NAME,
        autoretry_for=(PublishError,),
        dont_autoretry_for=(MessageTooLargeError,),
        retry_backoff=1,
        retry_backoff_max=30,
        max_retries=8,
        ignore_result=True,
    )(_publish_template)


def _require_celery() -> None:
    if _celery_missing is not None:
        raise ModuleNotFoundError(
            "send_later() and broadcast_later() need Celery: pip install 'turbocast[celery]'",
            name="celery",
        ) from _celery_missing


def _enqueue(
    channel: str,
    action: str,
    target: str | None,
    targets: str | None,
    method: str | None,
    template: str,
    context: dict[str, Any],
) -> AsyncResult:
    if (target is None) == (targets is None):
        raise InvalidStreamError("pass exactly one of target and targets")
    # Refuse a bad action, target or method now, in the view, not later in a worker.
    _build(action, target, targets, method, Markup("")).render()
    return publish_template.delay(channel, action, target, targets, method, template, context)


def send_later(
    session_id: str,
    action: str,
    target: str | None = None,
    *,
    template: str,
    targets: str | None = None,
    method: str | None = None,
    **context: Any,
) -> AsyncResult:
    """Have a worker render ``template`` and send it to one session; returns at once.

    Example, in a view::

        send_later(session_id(), "prepend", "notifications",
                   template="notification.html", text="Saved")

    :param session_id: the session to send to (``session_id()`` in a view).
    :param action: the Turbo Stream action (append, replace, ...).
    :param target: the target element's id (or ``targets=``).
    :param template: the Jinja2 template that renders the content.
    :param targets: a CSS selector instead of ``target``.
    :param method: ``"morph"`` for replace and update.
    :param context: the template's variables (JSON values: ids, not objects).
    :raises InvalidChannelError: a malformed session id.
    :raises InvalidStreamError: a bad action, target or method.
    :raises ModuleNotFoundError: Celery is not installed (``turbocast[celery]``).
    """
    _require_celery()
    channel = channel_for(session_id, _state().config["TURBO_CHANNEL_PREFIX"])
    return _enqueue(channel, action, target, targets, method, template, context)


def broadcast_later(
    action: str,
    target: str | None = None,
    *,
    template: str,
    targets: str | None = None,
    method: str | None = None,
    **context: Any,
) -> AsyncResult:
    """Have a worker render ``template`` and send it to every socket; returns at once.

    :param action: the Turbo Stream action.
    :param target: the target element's id (or ``targets=``).
    :param template: the Jinja2 template that renders the content.
    :param targets: a CSS selector instead of ``target``.
    :param method: ``"morph"`` for replace and update.
    :param context: the template's variables (JSON values).
    :raises ModuleNotFoundError: Celery is not installed (``turbocast[celery]``).
    """
    _require_celery()
    channel = broadcast_channel(_state().config["TURBO_CHANNEL_PREFIX"])
    return _enqueue(channel, action, target, targets, method, template, context)
