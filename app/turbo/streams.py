"""Turbo Stream builders: ``<turbo-stream>`` elements as :class:`markupsafe.Markup`.

Build one stream with a short constructor or by chaining; every chaining
method returns a new :class:`TurboStream`, so a shared base can be reused::

    TurboStream.append("messages", Markup(render_template("message.html", m=m)))
    TurboStream.replace("card_7", html, method="morph")
    TurboStream.refresh(request_id=rid)

    base = TurboStream(html).action("append")
    base.target("inbox"), base.targets(".unread-list")

Content rule (security): content that has ``__html__`` (a ``Markup``, a
rendered Jinja2 macro) goes into the ``<template>`` as-is; a plain ``str`` is
TEXT and is HTML-escaped. To send rendered HTML, wrap it:
``Markup(render_template(...))``. Every attribute value is escaped, always.

This module is pure: it imports no Flask and can run in any worker.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Protocol

from markupsafe import Markup, escape

from .errors import InvalidStreamError

__all__ = ["ACTIONS", "MIME_TYPE", "HasHTML", "TurboStream", "render_streams"]

#: The ``Content-Type`` of an HTTP response made of Turbo Streams.
MIME_TYPE = "text/vnd.turbo-stream.html"

#: The actions Turbo 8 knows without any custom ``StreamActions``.
ACTIONS: frozenset[str] = frozenset(
    {"append", "prepend", "replace", "update", "remove", "before", "after", "refresh"}
)

_METHOD_ACTIONS = frozenset({"replace", "update", "refresh"})
_METHODS = frozenset({"morph", "replace"})
_SCROLLS = frozenset({"preserve", "reset"})
# Built-in actions without a <template>: Turbo ignores content there, so content is a bug.
_NO_CONTENT_ACTIONS = frozenset({"remove", "refresh"})
_RESERVED_ATTRS = frozenset({"action", "target", "targets"})

_ATTR_NAME_RE = re.compile(r"[a-zA-Z_:][-a-zA-Z0-9_:.]*")
_CUSTOM_ACTION_RE = re.compile(r"[a-z][a-z0-9_-]*")


class HasHTML(Protocol):
    """Anything that renders itself as safe HTML, such as :class:`markupsafe.Markup`."""

    def __html__(self) -> str: ...


#: What a stream's ``<template>`` accepts: safe HTML as-is, ``str`` escaped, ``None`` empty.
Content = HasHTML | str | None
AttrValue = str | int | float | None


def _to_markup(content: object) -> Markup:
    if content is None:
        return Markup("")
    # escape() keeps what has __html__ and escapes everything else.
    if hasattr(content, "__html__") or isinstance(content, str):
        return escape(content)
    raise InvalidStreamError(
        f"stream content must be Markup, an object with __html__, str or None, "
        f"not {type(content).__name__}"
    )


def _attr_value(name: str, value: object) -> str:
    # bool is an int: str(True) would send "True", which no one means.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidStreamError(
            f"attribute {name!r} takes a str, int or float, not {type(value).__name__}"
        )
    return str(value)


def _check_attr_name(name: str) -> str:
    if not isinstance(name, str) or not _ATTR_NAME_RE.fullmatch(name):
        raise InvalidStreamError(f"{name!r} is not a valid attribute name")
    if name.lower() in _RESERVED_ATTRS:
        raise InvalidStreamError(
            f"attribute {name!r} is set by .action(), .target() or .targets(), not .attr()"
        )
    return name


def _check_selector(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidStreamError(f"{kind} must be a non-empty str, not {value!r}")
    return value


def _make_stream(action: str, attrs: Iterable[tuple[str, str]], content: Markup | None) -> Markup:
    """Write one ``<turbo-stream>``; the only place stream HTML is put together.

    ``content`` None means no ``<template>`` child at all.
    """
    # escape() (markupsafe's C code) on every name and value: what Markup.format does,
    # without its string.Formatter, which cost most of a publish.
    attributes = "".join(f' {escape(name)}="{escape(value)}"' for name, value in attrs)
    head = f'<turbo-stream action="{escape(action)}"{attributes}>'
    body = "" if content is None else f"<template>{content}</template>"
    return Markup(f"{head}{body}</turbo-stream>")  # noqa: S704 - every part escaped above


class TurboStream:
    """One Turbo Stream, built by chaining; each method returns a new stream.

    :param content: what goes into the ``<template>``. ``Markup`` (or anything with
        ``__html__``) is inserted as-is; a plain ``str`` is escaped as text, so pass
        rendered HTML as ``Markup(render_template(...))``. ``None`` means empty.
    :raises InvalidStreamError: content of another type.
    """

    __slots__ = (
        "_action",
        "_attrs",
        "_content",
        "_method",
        "_request_id",
        "_scroll",
        "_target",
        "_targets",
    )

    def __init__(self, content: Content = "") -> None:
        self._content: Markup = _to_markup(content)
        self._action: str | None = None
        self._target: str | None = None
        self._targets: str | None = None
        self._method: str | None = None
        self._request_id: str | None = None
        self._scroll: str | None = None
        # A tuple, not a dict: copies share it safely and it keeps insertion order.
        self._attrs: tuple[tuple[str, str], ...] = ()

    def _with(self, **changes: object) -> TurboStream:
        new = copy.copy(self)
        for name, value in changes.items():
            setattr(new, f"_{name}", value)
        return new

    # -- chaining -------------------------------------------------------------

    def action(self, name: str) -> TurboStream:
        """Return a copy with a built-in Turbo 8 action.

        :param name: one of :data:`ACTIONS`; custom actions go through :meth:`custom`.
        :raises InvalidStreamError: an unknown action.
        """
        if name not in ACTIONS:
            raise InvalidStreamError(
                f"unknown Turbo Stream action {name!r}; built-in actions are "
                f"{', '.join(sorted(ACTIONS))}. For a custom action use "
                f".custom({name!r}, ...) or TurboStream.custom_action({name!r}, ...)"
            )
        return self._with(action=name)

    def custom(self, action_name: str, **attrs: AttrValue) -> TurboStream:
        """Return a copy with a custom action (a ``StreamActions`` entry) and attributes.

        :param action_name: the action, ``[a-z][a-z0-9_-]*``.
        :param attrs: extra attributes; ``_`` in a keyword becomes ``-`` (``data_x`` → ``data-x``).
        :raises InvalidStreamError: a malformed action or attribute name or value.
        """
        if not isinstance(action_name, str) or not _CUSTOM_ACTION_RE.fullmatch(action_name):
            raise InvalidStreamError(f"custom action {action_name!r} must match [a-z][a-z0-9_-]*")
        new = self._with(action=action_name)
        for name, value in attrs.items():
            new = new.attr(name.replace("_", "-"), value)
        return new

    def target(self, dom_id: str) -> TurboStream:
        """Return a copy aimed at the element with this id (clears :meth:`targets`).

        :param dom_id: the target element's ``id``.
        """
        return self._with(target=_check_selector("target", dom_id), targets=None)

    def targets(self, css_selector: str) -> TurboStream:
        """Return a copy aimed at every element matching a CSS selector (clears :meth:`target`).

        :param css_selector: a selector for ``querySelectorAll``, e.g. ``".item"``.
        """
        return self._with(targets=_check_selector("targets", css_selector), target=None)

    def method(self, value: str | None) -> TurboStream:
        """Return a copy with ``method`` (``replace``, ``update`` and ``refresh`` only).

        :param value: ``"morph"`` or ``"replace"``; ``None`` removes it.
        :raises InvalidStreamError: another value (the action is checked at render time).
        """
        if value is not None and value not in _METHODS:
            raise InvalidStreamError(f"method must be 'morph' or 'replace', not {value!r}")
        return self._with(method=value)

    def request_id(self, value: str | None) -> TurboStream:
        """Return a copy with ``request-id`` (``refresh`` only).

        :param value: the id of the request that caused the refresh; ``None`` removes it.
        """
        if value is not None:
            _check_selector("request_id", value)
        return self._with(request_id=value)

    def scroll(self, value: str | None) -> TurboStream:
        """Return a copy with ``scroll`` (``refresh`` only).

        :param value: ``"preserve"`` or ``"reset"``; ``None`` removes it.
        :raises InvalidStreamError: another value.
        """
        if value is not None and value not in _SCROLLS:
            raise InvalidStreamError(f"scroll must be 'preserve' or 'reset', not {value!r}")
        return self._with(scroll=value)

    def attr(self, name: str, value: AttrValue) -> TurboStream:
        """Return a copy with one extra attribute added, replaced in place, or removed.

        :param name: the attribute name; ``action``, ``target`` and ``targets`` are reserved.
        :param value: a str (int and float become str); ``None`` removes the attribute.
        :raises InvalidStreamError: a malformed or reserved name, or a value of another type.
        """
        _check_attr_name(name)
        # HTML attribute names are case-insensitive: "Data-X" and "data-x" are one attribute.
        names = [n.lower() for n, _ in self._attrs]
        attrs = list(self._attrs)
        if value is None:
            if name.lower() in names:
                del attrs[names.index(name.lower())]
        elif name.lower() in names:
            attrs[names.index(name.lower())] = (name, _attr_value(name, value))
        else:
            attrs.append((name, _attr_value(name, value)))
        return self._with(attrs=tuple(attrs))

    # -- short constructors ---------------------------------------------------

    @classmethod
    def _aimed(
        cls, action: str, target: str | None, targets: str | None, content: Content
    ) -> TurboStream:
        if (target is None) == (targets is None):
            raise InvalidStreamError(
                f"{action}: pass exactly one of a target (an element id) or targets= "
                f"(a CSS selector)"
            )
        stream = cls(content).action(action)
        if target is not None:
            return stream.target(target)
        assert targets is not None
        return stream.targets(targets)

    @classmethod
    def append(
        cls, target: str | None = None, content: Content = None, *, targets: str | None = None
    ) -> TurboStream:
        """Append content inside the target, after its last child.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector for several targets.
        """
        return cls._aimed("append", target, targets, content)

    @classmethod
    def prepend(
        cls, target: str | None = None, content: Content = None, *, targets: str | None = None
    ) -> TurboStream:
        """Prepend content inside the target, before its first child.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector for several targets.
        """
        return cls._aimed("prepend", target, targets, content)

    @classmethod
    def before(
        cls, target: str | None = None, content: Content = None, *, targets: str | None = None
    ) -> TurboStream:
        """Insert content before the target element.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector for several targets.
        """
        return cls._aimed("before", target, targets, content)

    @classmethod
    def after(
        cls, target: str | None = None, content: Content = None, *, targets: str | None = None
    ) -> TurboStream:
        """Insert content after the target element.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector for several targets.
        """
        return cls._aimed("after", target, targets, content)

    @classmethod
    def replace(
        cls,
        target: str | None = None,
        content: Content = None,
        *,
        targets: str | None = None,
        method: str | None = None,
    ) -> TurboStream:
        """Replace the whole target element with content.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector for several targets.
        :param method: ``"morph"`` to morph instead of replacing.
        """
        return cls._aimed("replace", target, targets, content).method(method)

    @classmethod
    def update(
        cls,
        target: str | None = None,
        content: Content = None,
        *,
        targets: str | None = None,
        method: str | None = None,
    ) -> TurboStream:
        """Replace the target element's children with content.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector for several targets.
        :param method: ``"morph"`` to morph the children instead of replacing them.
        """
        return cls._aimed("update", target, targets, content).method(method)

    @classmethod
    def remove(cls, target: str | None = None, *, targets: str | None = None) -> TurboStream:
        """Remove the target element.

        :param target: the target element's id (or pass ``targets=`` instead).
        :param targets: a CSS selector for several targets.
        """
        return cls._aimed("remove", target, targets, None)

    @classmethod
    def refresh(
        cls,
        *,
        request_id: str | None = None,
        method: str | None = None,
        scroll: str | None = None,
    ) -> TurboStream:
        """Ask the page to refresh itself (Turbo 8 page refresh).

        :param request_id: the ``X-Turbo-Request-Id`` of the request that caused it, so the
            browser that made the change skips the refresh.
        :param method: ``"morph"`` or ``"replace"``.
        :param scroll: ``"preserve"`` or ``"reset"``.
        """
        return cls().action("refresh").request_id(request_id).method(method).scroll(scroll)

    @classmethod
    def custom_action(
        cls,
        action: str,
        target: str | None = None,
        content: Content = None,
        *,
        targets: str | None = None,
        **attrs: AttrValue,
    ) -> TurboStream:
        """Build a stream with a custom action (registered in ``Turbo.StreamActions``).

        :param action: the custom action name, ``[a-z][a-z0-9_-]*``.
        :param target: the target element's id, if the action uses one.
        :param content: the ``<template>`` content; see :class:`TurboStream` for escaping.
        :param targets: a CSS selector, instead of ``target``.
        :param attrs: extra attributes; ``_`` in a keyword becomes ``-``.
        """
        if target is not None and targets is not None:
            raise InvalidStreamError(f"{action}: pass a target or targets=, not both")
        stream = cls(content).custom(action, **attrs)
        if target is not None:
            stream = stream.target(target)
        if targets is not None:
            stream = stream.targets(targets)
        return stream

    # -- rendering ------------------------------------------------------------

    def _checked_attrs(self, action: str) -> list[tuple[str, str]]:
        attrs: list[tuple[str, str]] = []
        if action == "refresh":
            if self._target is not None or self._targets is not None:
                raise InvalidStreamError("refresh takes no target or targets")
        elif self._target is not None:
            attrs.append(("target", self._target))
        elif self._targets is not None:
            attrs.append(("targets", self._targets))
        # Custom actions may do without a target (a redirect, a console log).
        elif action in ACTIONS:
            raise InvalidStreamError(f"{action} needs a target or targets")

        if self._method is not None:
            if action not in _METHOD_ACTIONS:
                raise InvalidStreamError(
                    f"method is only for replace, update and refresh, not {action}"
                )
            attrs.append(("method", self._method))
        for name, value in (("request-id", self._request_id), ("scroll", self._scroll)):
            if value is not None:
                if action != "refresh":
                    raise InvalidStreamError(f"{name} is only for refresh, not {action}")
                attrs.append((name, value))

        taken = {name for name, _ in attrs}
        for name, value in self._attrs:
            if name.lower() in taken:
                raise InvalidStreamError(f"attribute {name!r} is set twice")
            attrs.append((name, value))
        return attrs

    def render(self) -> Markup:
        """Return the ``<turbo-stream>`` element.

        :raises InvalidStreamError: no action, a missing or forbidden target, content on
            remove or refresh, or method, request-id or scroll on an action without them.
        """
        action = self._action
        if action is None:
            raise InvalidStreamError("the stream has no action; call .action() or .custom()")
        attrs = self._checked_attrs(action)
        if action in _NO_CONTENT_ACTIONS:
            if self._content:
                raise InvalidStreamError(f"{action} takes no content")
            return _make_stream(action, attrs, None)
        return _make_stream(action, attrs, self._content)

    def __html__(self) -> Markup:
        return self.render()

    def __str__(self) -> str:
        return str(self.render())

    def _key(self) -> tuple[object, ...]:
        return (
            self._action,
            self._target,
            self._targets,
            self._method,
            self._request_id,
            self._scroll,
            self._attrs,
            str(self._content),
        )

    # Equal state renders equal HTML, and comparing state never raises on a half-built stream.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TurboStream):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        aim = (
            f"target={self._target!r}" if self._target is not None else f"targets={self._targets!r}"
        )
        return f"TurboStream(action={self._action!r}, {aim})"


def render_streams(*streams: TurboStream | HasHTML) -> Markup:
    """Join several streams into one message (one WebSocket frame, one HTTP body).

    :param streams: :class:`TurboStream` objects or other safe HTML (``Markup``).
    :raises InvalidStreamError: a plain ``str``: it cannot be told apart from text,
        so wrap stream HTML you trust in ``Markup``.
    """
    parts: list[Markup] = []
    for stream in streams:
        if not hasattr(stream, "__html__"):
            raise InvalidStreamError(
                f"render_streams takes TurboStream or Markup, not {type(stream).__name__}; "
                f"wrap trusted stream HTML in Markup()"
            )
        parts.append(escape(stream))
    return Markup("").join(parts)
