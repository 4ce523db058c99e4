"""Turbo Streams whose content is a Jinja2 template, rendered in the app's context.

:func:`render_stream` is what the ``*_later`` calls do in a worker, available
now: the same arguments (``action, target=None, *, template, targets=None,
method=None, **context``), giving a :class:`~turbocast.streams.TurboStream`
that any push takes, to any audience, in a batch, with ``exclude=``::

    turbo.to_stream("board:1", render_stream("append", "posts",
                                             template="posts/_post.html", post=post),
                    exclude=session_id())

It needs a Flask app context (a view has one; a Celery ``FlaskTask`` too), since
it renders with ``flask.render_template``. :mod:`turbocast.streams` stays free of
Flask.
"""

from __future__ import annotations

from typing import Any

from flask import render_template
from markupsafe import Markup

from .errors import InvalidStreamError
from .streams import TurboStream


def build_stream(
    action: str,
    target: str | None,
    targets: str | None,
    method: str | None,
    content: Markup,
) -> TurboStream:
    """A stream of ``action`` aimed at ``target`` (an id) or ``targets`` (a CSS selector).

    :param action: the Turbo Stream action.
    :param target: the target element's id, or ``None`` with ``targets``.
    :param targets: a CSS selector, or ``None``.
    :param method: ``"morph"`` or ``None``.
    :param content: the rendered content.
    :raises InvalidStreamError: not exactly one of ``target`` and ``targets``.
    """
    if (target is None) == (targets is None):
        raise InvalidStreamError("pass exactly one of target and targets")
    stream = TurboStream(content).action(action)
    stream = stream.targets(targets) if targets is not None else stream.target(target or "")
    if method is not None:
        stream = stream.method(method)
    return stream


def render_stream(
    action: str,
    target: str | None = None,
    *,
    template: str,
    targets: str | None = None,
    method: str | None = None,
    **context: Any,
) -> TurboStream:
    """A Turbo Stream whose content is ``template`` rendered with ``context``.

    The arguments of ``turbo.to_stream_later`` and its kin, rendered now::

        render_stream("append", "posts", template="posts/_post.html", post=post)
        render_stream("update", targets=".count", template="count.html", n=3)

    Needs an app context (``flask.render_template``). The action, target and method
    are checked before the template renders.

    :param action: the Turbo Stream action (append, replace, ...).
    :param target: the target element's id (or ``targets=``).
    :param template: the Jinja2 template that renders the content.
    :param targets: a CSS selector instead of ``target``.
    :param method: ``"morph"`` for replace and update.
    :param context: the template's variables.
    :raises InvalidStreamError: a bad action, target or method, or both or neither
        of ``target`` and ``targets``.
    """
    # Refuse a bad stream before spending a render on it.
    build_stream(action, target, targets, method, Markup("")).render()
    html = Markup(render_template(template, **context))  # noqa: S704 - Jinja2 autoescapes
    return build_stream(action, target, targets, method, html)
