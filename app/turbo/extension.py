"""The Flask extension: per-app state, the routes it registers, the publishing shortcuts."""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from flask import Flask, current_app

from .assets import ASSET_NAMES, ASSETS_ENDPOINT, serve_asset
from .channels import (
    broadcast_channel,
    channel_for,
    history_key,
    label_for,
    stream_channel,
    user_channel,
)
from .errors import TurboError
from .helpers import (
    ENDPOINT,
    SSE_ENDPOINT,
    stream_url,
    turbo_scripts,
    turbo_stream_source,
)
from .presence import Presence, PresenceKeeper, member_dom_id, presence_target
from .publisher import Batch, Publisher
from .relay import Relay
from .settings import DEFAULTS, redis_url

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

    from .health import Health


class _Current(enum.Enum):
    REQUEST = "the current request's X-Turbo-Request-Id"


#: ``refresh_stream``'s default request id: the current request's ``X-Turbo-Request-Id``.
CURRENT_REQUEST = _Current.REQUEST

logger = logging.getLogger("turbocast")


UserLoader = Callable[[], "str | int | None"]
L = TypeVar("L", bound=UserLoader)
#: (stream name, user id, joined) -> Turbo Stream(s) to push, or None.
PresenceRenderer = Callable[[str, str, bool], Any]
R = TypeVar("R", bound=PresenceRenderer)


class TurboState:
    """Per-app state, kept in ``app.extensions["turbo"]``."""

    def __init__(self, app: Flask, turbo: Turbo, celery: Celery | None = None) -> None:
        self.config = app.config
        self.turbo = turbo
        #: The Celery app that ``*_later`` enqueues on; ``None``: ``app.extensions["celery"]``.
        self.celery = celery
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._relay: Relay | None = None
        self._sockets: dict[str, int] = {}
        self.app = app
        self._presence: Presence | None = None
        self._keeper: PresenceKeeper | None = None

    @contextmanager
    def socket_slot(self, sid: str) -> Iterator[bool]:
        """Count one socket of a session while it is open; yields ``False`` when over the cap.

        :param sid: the session's id.
        """
        cap = int(self.config["TURBO_MAX_SOCKETS_PER_SESSION"])
        with self._lock:
            held = self._sockets.get(sid, 0)
            granted = not cap or held < cap
            if granted:
                self._sockets[sid] = held + 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    left = self._sockets[sid] - 1
                    if left:
                        self._sockets[sid] = left
                    else:
                        del self._sockets[sid]

    @property
    def redis_url(self) -> str:
        return redis_url(self.config)

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                # The same call a worker makes: the two cannot disagree on a setting.
                self._publisher = Publisher.from_config(self.config)
            return self._publisher

    @property
    def presence(self) -> Presence:
        """Presence in Redis, with this app's settings (its own connections)."""
        with self._lock:
            if self._presence is None:
                self._presence = Presence.from_config(self.config)
            return self._presence

    def keeper(self) -> PresenceKeeper:
        """This process's presence keeper (its thread starts with its first socket)."""
        presence = self.presence
        with self._lock:
            if self._keeper is None:
                self._keeper = PresenceKeeper(presence, self.announce)
            return self._keeper

    def announce(self, name: str, user: str, joined: bool) -> None:
        """Push a presence change to the stream's pages, rendered by the app.

        Called by the handler of the socket that made a join, and by the keeper's
        thread for the leaves it reaps; a failure is logged, never raised.

        :param name: the stream's name.
        :param user: the member's user id as text.
        :param joined: a join (``True``) or a leave.
        """
        try:
            with self.app.app_context():
                streams = self.turbo.presence_streams(name, user, joined)
                if streams:
                    self.publisher.to_stream(name, *streams)
        except Exception:  # noqa: BLE001 - a renderer's or Redis's failure: log, go on
            logger.exception(
                "presence change not pushed",
                extra={"turbo_stream": name, "turbo_joined": joined},
            )
            return
        logger.info(
            "presence: %s %s",
            "joined" if joined else "left",
            name,
            extra={"turbo_stream": name, "turbo_joined": joined},
        )

    def use_publisher(self, publisher: Publisher | None) -> Publisher | None:
        """Publish through ``publisher`` from now on; returns the one it replaces.

        ``None`` builds one from the config again at the next push. Tests install a
        capturing publisher this way (:mod:`turbocast.capture`).

        :param publisher: the publisher every push of this app goes through.
        """
        with self._lock:
            previous, self._publisher = self._publisher, publisher
        return previous

    def page_channels(self, sid: str, streams: list[str], *, shared: bool = True) -> list[str]:
        """The channels a page of this session listens to: its session, everyone, its named
        streams, and its user's channel when the user loader names one.

        :param sid: the session's id.
        :param streams: the names of the page's streams (already verified).
        :param shared: ``False`` for the named streams only (a page's second source).
        :raises InvalidChannelError: a malformed id or name, or a user id the loader
            returned that cannot name a channel.
        """
        prefix = self.config["TURBO_CHANNEL_PREFIX"]
        channels = [channel_for(sid, prefix), broadcast_channel(prefix)] if shared else []
        channels += [stream_channel(name, prefix) for name in streams]
        user_id = self.turbo.load_user_id() if shared else None
        if user_id is not None:
            channels.append(user_channel(user_id, prefix))
        return channels

    def positions(self, channels: list[str]) -> list[tuple[str, str]]:
        """Each channel's label and newest history id: where a page rendered now starts.

        A page carries these into its socket's URL, so the socket replays what was
        published between the render and the connect. Without Redis, no positions.

        :param channels: the channels the page's socket will listen to.
        """
        prefix = self.config["TURBO_CHANNEL_PREFIX"]
        try:
            ids = self.publisher.history.positions([history_key(c, prefix) for c in channels])
        except (redis.RedisError, TurboError) as exc:
            logger.warning(
                "no stream positions for the page (%s)",
                exc.__class__.__name__,
                extra={"turbo_error": repr(exc)},
            )
            return []
        return [(label_for(c, prefix), i) for c, i in zip(channels, ids, strict=True)]

    def relay(self) -> Relay:
        """Return this process's relay, starting it on first use.

        Started lazily from the first socket, in the process that serves it: a
        pre-fork master, a Celery worker or the CLI never runs one, and a forked
        child never inherits a half-made one. Exactly one per process, however
        many sockets arrive at once: it is made and started under locks.
        """
        history = self.publisher.history  # (takes the lock itself)
        with self._lock:
            relay = self._relay
            if relay is None or relay.pid not in (None, os.getpid()):
                relay = Relay(
                    self.redis_url,
                    prefix=self.config["TURBO_CHANNEL_PREFIX"],
                    timeout=float(self.config["TURBO_REDIS_TIMEOUT"]),
                    health_check_interval=float(self.config["TURBO_REDIS_HEALTH_CHECK_INTERVAL"]),
                    history=history,
                    heartbeat_interval=float(self.config["TURBO_PING_INTERVAL"]),
                )
                self._relay = relay
        relay.start()
        return relay

    def shutdown(self) -> None:
        """Stop the relay and presence threads (tests and graceful shutdown)."""
        with self._lock:
            relay, self._relay = self._relay, None
            keeper, self._keeper = self._keeper, None
        if relay is not None:
            relay.stop()
        if keeper is not None:
            keeper.stop()


def _page_members(name: str) -> list[str]:
    """``turbo_members(name)`` in a template: the members, or none when Redis is away.

    A page still renders without Redis (its stream source reconnects later), as it does
    without its stream positions; the members it missed then arrive as joins.
    """
    try:
        return _state().presence.members(name)
    except redis.RedisError as exc:
        logger.warning(
            "no presence members for the page (%s)",
            exc.__class__.__name__,
            extra={"turbo_stream": name, "turbo_error": repr(exc)},
        )
        return []


def _state() -> TurboState:
    state = current_app.extensions.get("turbo")
    if not isinstance(state, TurboState):
        raise TurboError("turbocast is not set up on this app: call Turbo(app) or init_app(app)")
    return state


class Turbo:
    """The turbocast Flask extension.

    ``Turbo(app)`` or ``turbo.init_app(app)`` registers the WebSocket endpoint
    (``TURBO_WEBSOCKET_ROUTE``, ``/turbo-stream`` by default), the route of Turbo's
    and turbocast's JavaScript (``TURBO_ASSETS_ROUTE``), the template helpers
    ``turbo_scripts()`` and ``turbo_stream_source()``, and a session id for each
    browser session that renders a stream source (or calls ``session_id()``): no
    other response gets a cookie.

    :param app: the app to set up now; or call :meth:`init_app` later.
    :param celery: the Celery app that the ``*_later`` methods enqueue on, for every app
        this extension sets up (``init_app`` can name another); without it, each app's
        ``app.extensions["celery"]``.
    """

    def __init__(self, app: Flask | None = None, celery: Celery | None = None) -> None:
        self._user_loader: UserLoader | None = None
        self._presence_renderer: PresenceRenderer | None = None
        self._celery = celery
        if app is not None:
            self.init_app(app)

    def user_loader(self, loader: L) -> L:
        """Register how to find the current user's id during the WebSocket handshake.

        A decorator, as with Flask-Login: the function runs in the handshake's
        request context and returns the user's id, or ``None`` when nobody is
        signed in. Sockets of a signed-in user also receive :meth:`to_user` pushes::

            @turbo.user_loader
            def current_user_id():
                return current_user.get_id() if current_user.is_authenticated else None

        :param loader: the function.
        """
        self._user_loader = loader
        return loader

    def presence_renderer(self, renderer: R) -> R:
        """Register how a join and a leave of a stream's presence are rendered.

        A decorator: the function gets the stream's name, the member's user id (as
        text) and whether they joined, and returns the Turbo Streams to push to the
        stream's pages (one, a list, or ``None`` for nothing). It runs in an app
        context, in the web process that saw the change::

            @turbo.presence_renderer
            def render_presence(stream, user_id, joined):
                if joined:
                    user = db.session.get(User, int(user_id))
                    return render_stream("append", presence_target(stream),
                                         template="boards/_avatar.html", user=user)
                return TurboStream.remove(member_dom_id(stream, user_id))

        Without one: an ``<li id="member_dom_id(...)">`` with the user id, appended to
        the element with id ``presence_target(stream)``, and removed on leave.

        :param renderer: the function.
        """
        self._presence_renderer = renderer
        return renderer

    def presence_streams(self, name: str, user: str, joined: bool) -> list[Any]:
        """The Turbo Streams that announce a join or a leave (see :meth:`presence_renderer`).

        :param name: the stream's name.
        :param user: the member's user id as text.
        :param joined: a join (``True``) or a leave.
        """
        from markupsafe import Markup

        from .presence import member_dom_id, presence_target
        from .streams import TurboStream

        if self._presence_renderer is not None:
            result = self._presence_renderer(name, user, joined)
            if result is None:
                return []
            return list(result) if isinstance(result, list | tuple) else [result]
        dom = member_dom_id(name, user)
        if joined:
            item = Markup('<li id="{}" class="turbo-member">{}</li>').format(dom, user)
            return [TurboStream.append(presence_target(name), item)]
        return [TurboStream.remove(dom)]

    def members(self, name: str) -> list[str]:
        """The users on a named stream now (ids as text, sorted), from any process.

        :param name: the stream's name.
        """
        return _state().presence.members(name)

    def member_count(self, name: str) -> int:
        """How many users are on a named stream now.

        :param name: the stream's name.
        """
        return _state().presence.count(name)

    def load_user_id(self) -> str | int | None:
        """The current user's id from the registered loader (``None`` without one)."""
        return self._user_loader() if self._user_loader is not None else None

    def init_app(self, app: Flask, celery: Celery | None = None) -> None:
        """Set up turbocast on an app.

        :param app: the Flask app.
        :param celery: the Celery app that the ``*_later`` methods enqueue on (default: the
            one given to ``Turbo()``); without either, ``app.extensions["celery"]``, looked
            up at each call. Celery's default app is never used.
        """
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        from .endpoint import sse_endpoint, websocket_endpoint

        celery = celery if celery is not None else self._celery
        app.extensions["turbo"] = TurboState(app, self, celery)
        if celery is not None or "celery" in app.extensions:
            # Registers turbocast's tasks with every Celery app of this process, so a worker
            # made by the app factory runs them with no include=["turbocast.tasks", ...].
            from . import refreshes, tasks  # noqa: F401
        app.add_url_rule(
            app.config["TURBO_WEBSOCKET_ROUTE"],
            endpoint=ENDPOINT,
            view_func=websocket_endpoint,
            websocket=True,
        )
        app.add_url_rule(
            app.config["TURBO_SSE_ROUTE"], endpoint=SSE_ENDPOINT, view_func=sse_endpoint
        )
        app.add_url_rule(
            app.config["TURBO_ASSETS_ROUTE"].rstrip("/") + f"/<any({ASSET_NAMES}):name>",
            endpoint=ASSETS_ENDPOINT,
            view_func=serve_asset,
        )
        if app.config["TURBO_HEALTH_ROUTE"]:
            from .health import health_view

            app.add_url_rule(
                app.config["TURBO_HEALTH_ROUTE"], endpoint="turbo_health", view_func=health_view
            )
        if app.config["TURBO_METRICS_ROUTE"]:
            from .metrics import metrics_view, registry

            registry()  # raises now, at set-up, when prometheus-client is missing
            app.add_url_rule(
                app.config["TURBO_METRICS_ROUTE"], endpoint="turbo_metrics", view_func=metrics_view
            )
        from .cli import turbo_cli

        app.cli.add_command(turbo_cli)
        app.add_template_global(turbo_scripts)
        # Presence on a page: the members at its first render, and the ids of their elements.
        app.add_template_global(presence_target)
        app.add_template_global(member_dom_id)
        app.add_template_global(_page_members, "turbo_members")
        app.context_processor(
            lambda: {"turbo_stream_source": turbo_stream_source, "turbo_stream_url": stream_url}
        )

    def health(self) -> Health:
        """Check this process: Redis answers, the relay is subscribed, the heartbeat beats.

        Starts this process's relay if no socket has yet. See :mod:`turbocast.health`.
        """
        from .health import check

        return check(_state())

    @property
    def publisher(self) -> Publisher:
        """The current app's :class:`Publisher`."""
        return _state().publisher

    def to_session(
        self,
        session_id: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams to one browser session (see :meth:`Publisher.to_session`).

        :param session_id: the session's id.
        :param streams: ``TurboStream`` objects, sent as one message.
        :param exclude: a session id (``session_id()``) whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        """
        return _state().publisher.to_session(
            session_id, *streams, exclude=exclude, exclude_socket=exclude_socket
        )

    def to_user(
        self,
        user_id: str | int,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams to every socket of one user (see :meth:`Publisher.to_user`).

        :param user_id: the user's id.
        :param streams: ``TurboStream`` objects, sent as one message.
        :param exclude: a session id (``session_id()``) whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        """
        return _state().publisher.to_user(
            user_id, *streams, exclude=exclude, exclude_socket=exclude_socket
        )

    def to_stream(
        self,
        name: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams to every page listening to a named stream (:meth:`Publisher.to_stream`).

        :param name: the stream's name.
        :param streams: ``TurboStream`` objects, sent as one message.
        :param exclude: a session id (``session_id()``) whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        """
        return _state().publisher.to_stream(
            name, *streams, exclude=exclude, exclude_socket=exclude_socket
        )

    def to_all(
        self, *streams: Any, exclude: str | None = None, exclude_socket: str | None = None
    ) -> int:
        """Send streams to every socket (see :meth:`Publisher.to_all`).

        :param streams: ``TurboStream`` objects, sent as one message.
        :param exclude: a session id (``session_id()``) whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        """
        return _state().publisher.to_all(*streams, exclude=exclude, exclude_socket=exclude_socket)

    def disconnect_session(self, session_id: str) -> int:
        """Close every socket of one browser session in every web process, with 4003.

        See :meth:`Publisher.disconnect_session` and the README's sign-in recipe.

        :param session_id: the session's id before the sign-out.
        :raises InvalidChannelError: a malformed session id (nothing is sent).
        """
        return _state().publisher.disconnect_session(session_id)

    def disconnect_user(self, user_id: str | int) -> int:
        """Close every socket of one user in every web process, with 4003.

        See :meth:`Publisher.disconnect_user` and the README's sign-in recipe.

        :param user_id: the user's id, as the user loader returns it.
        :raises InvalidChannelError: a user id that cannot name a channel (nothing is sent).
        """
        return _state().publisher.disconnect_user(user_id)

    def batch(self) -> Batch:
        """Collect pushes to send together in one Redis round trip when the block ends.

        ::

            with turbo.batch() as batch:
                batch.to_stream("board:1", TurboStream.remove("post-7"), exclude=session_id())
                batch.to_user(author_id, TurboStream.update("unread", "3"))

        See :meth:`Publisher.batch` and :class:`turbocast.publisher.Batch`.
        """
        return _state().publisher.batch()

    def refresh_stream(
        self, name: str, *, request_id: str | None | _Current = CURRENT_REQUEST
    ) -> None:
        """Ask every page of a named stream to refresh: one refresh per stream per window.

        Debounced across every process (``TURBO_REFRESH_DEBOUNCE``; see
        :mod:`turbocast.refreshes`). Call it in a view, in a hook the view's thread runs
        (SQLAlchemy's ``after_commit``) or in a Celery task::

            turbo.refresh_stream(f"board:{board.id}")

        :param name: the stream's name, such as ``"board:42"``.
        :param request_id: the id the refresh carries, so the tab that made the change
            skips it; by default the current request's ``X-Turbo-Request-Id`` (none
            outside a request); ``None`` for none.
        :raises InvalidChannelError: a name that cannot name a stream.
        :raises InvalidStreamError: a malformed request id.
        """
        from .refreshes import refresh_stream

        refresh_stream(name, request_id=request_id)

    def to_session_later(
        self,
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
        """Have a Celery worker render ``template`` and send it to one session; returns at once.

        Checks everything in the caller, before anything is enqueued (see :mod:`turbocast.tasks`)::

            turbo.to_session_later(session_id(), "prepend", "notifications",
                                   template="notification.html", text="Saved")

        :param session_id: the session to send to (``session_id()`` in a view).
        :param action: the Turbo Stream action (append, replace, ...).
        :param target: the target element's id (or ``targets=``).
        :param template: the Jinja2 template that renders the content, in the worker.
        :param targets: a CSS selector instead of ``target``.
        :param method: ``"morph"`` for replace and update.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        :param context: the template's variables (JSON values: ids, not objects).
        :raises CeleryNotConfiguredError: no Celery app to enqueue on.
        :raises InvalidChannelError: a malformed session id.
        :raises InvalidStreamError: a bad action, target or method.
        """
        from .tasks import enqueue

        def channel(prefix: str) -> str:
            return channel_for(session_id, prefix)

        return enqueue(
            channel, action, target, targets, method, template, context, exclude, exclude_socket
        )

    def to_user_later(
        self,
        user_id: str | int,
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
        """Have a Celery worker render ``template`` and send it to every socket of one user.

        :param user_id: the user's id, as the user loader returns it.
        :param action: the Turbo Stream action.
        :param target: the target element's id (or ``targets=``).
        :param template: the Jinja2 template that renders the content, in the worker.
        :param targets: a CSS selector instead of ``target``.
        :param method: ``"morph"`` for replace and update.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        :param context: the template's variables (JSON values).
        :raises CeleryNotConfiguredError: no Celery app to enqueue on.
        :raises InvalidChannelError: a user id that cannot name a channel.
        :raises InvalidStreamError: a bad action, target or method.
        """
        from .tasks import enqueue

        def channel(prefix: str) -> str:
            return user_channel(user_id, prefix)

        return enqueue(
            channel, action, target, targets, method, template, context, exclude, exclude_socket
        )

    def to_stream_later(
        self,
        name: str,
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
        """Have a Celery worker render ``template`` and send it to every page of a named stream.

        :param name: the stream's name, such as ``"board:42"``.
        :param action: the Turbo Stream action.
        :param target: the target element's id (or ``targets=``).
        :param template: the Jinja2 template that renders the content, in the worker.
        :param targets: a CSS selector instead of ``target``.
        :param method: ``"morph"`` for replace and update.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        :param context: the template's variables (JSON values).
        :raises CeleryNotConfiguredError: no Celery app to enqueue on.
        :raises InvalidChannelError: a name that cannot name a channel.
        :raises InvalidStreamError: a bad action, target or method.
        """
        from .tasks import enqueue

        def channel(prefix: str) -> str:
            return stream_channel(name, prefix)

        return enqueue(
            channel, action, target, targets, method, template, context, exclude, exclude_socket
        )

    def to_all_later(
        self,
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
        """Have a Celery worker render ``template`` and send it to every socket, everywhere.

        :param action: the Turbo Stream action.
        :param target: the target element's id (or ``targets=``).
        :param template: the Jinja2 template that renders the content, in the worker.
        :param targets: a CSS selector instead of ``target``.
        :param method: ``"morph"`` for replace and update.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id (``socket_id()``) that must not get it.
        :param context: the template's variables (JSON values).
        :raises CeleryNotConfiguredError: no Celery app to enqueue on.
        :raises InvalidStreamError: a bad action, target or method.
        """
        from .tasks import enqueue

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
