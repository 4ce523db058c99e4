"""The Flask extension: the ``/turbo-stream`` endpoint, the template helper, the session id."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request, session
from werkzeug.exceptions import BadRequest

from .channels import (
    broadcast_channel,
    channel_for,
    stream_channel,
    user_channel,
    valid_session_id,
)
from .connection import TurboConnection
from .errors import InvalidChannelError, TurboError
from .helpers import (
    ENDPOINT,
    SESSION_KEY,
    normalize_origin,
    session_id,
    site_origin,
    stream_url,
    turbo_stream_source,
)
from .outbox import Outbox
from .publisher import DEFAULT_MAX_MESSAGE_BYTES, Publisher
from .relay import Relay
from .signing import StreamSigner

logger = logging.getLogger("turbocast")

#: Every setting the extension reads, with its default. ``TURBO_REDIS_URL``
#: falls back to ``REDIS_URL``.
DEFAULTS: dict[str, Any] = {
    "TURBO_REDIS_URL": None,
    "TURBO_WEBSOCKET_ROUTE": "/turbo-stream",
    "TURBO_CHANNEL_PREFIX": "turbo",
    "TURBO_OUTBOX_SIZE": 256,
    "TURBO_PING_INTERVAL": 25.0,
    "TURBO_SEND_TIMEOUT": 30.0,
    "TURBO_MAX_MESSAGE_BYTES": DEFAULT_MAX_MESSAGE_BYTES,
    "TURBO_MAX_INCOMING_BYTES": 4096,
    "TURBO_MAX_INCOMING_RATE": 50,
    "TURBO_TRUSTED_PROXIES": 0,
    "TURBO_REDIS_HEALTH_CHECK_INTERVAL": 15.0,
    "TURBO_ALLOWED_ORIGINS": [],
    "TURBO_MAX_SOCKETS_PER_SESSION": 16,
    "TURBO_MAX_STREAMS_PER_SOCKET": 32,
}

#: HTTP status of a handshake without a valid session cookie.
STATUS_NO_SESSION = 403
#: HTTP status of a handshake from a page of another origin.
STATUS_BAD_ORIGIN = 403
#: HTTP status of a handshake asking for a stream without a valid signature.
STATUS_BAD_STREAM = 403
#: HTTP status of a handshake past ``TURBO_MAX_SOCKETS_PER_SESSION``.
STATUS_TOO_MANY_SOCKETS = 429

UserLoader = Callable[[], "str | int | None"]
L = TypeVar("L", bound=UserLoader)


class TurboState:
    """Per-app state, kept in ``app.extensions["turbo"]``."""

    def __init__(self, app: Flask, turbo: Turbo) -> None:
        self.config = app.config
        self.turbo = turbo
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._relay: Relay | None = None
        self._sockets: dict[str, int] = {}

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
        url = self.config.get("TURBO_REDIS_URL") or self.config.get("REDIS_URL")
        if not url:
            raise TurboError("turbocast needs Redis: set REDIS_URL (or TURBO_REDIS_URL)")
        return str(url)

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = Publisher(
                    self.redis_url,
                    prefix=self.config["TURBO_CHANNEL_PREFIX"],
                    max_message_bytes=int(self.config["TURBO_MAX_MESSAGE_BYTES"]),
                )
            return self._publisher

    def relay(self) -> Relay:
        """Return this process's relay, starting it on first use.

        Started lazily from the first socket, in the process that serves it: a
        pre-fork master, a Celery worker or the CLI never runs one, and a forked
        child never inherits a half-made one.
        """
        with self._lock:
            relay = self._relay
            if relay is None or relay.pid not in (None, os.getpid()):
                relay = Relay(
                    self.redis_url,
                    prefix=self.config["TURBO_CHANNEL_PREFIX"],
                    health_check_interval=float(self.config["TURBO_REDIS_HEALTH_CHECK_INTERVAL"]),
                )
                self._relay = relay
        relay.start()
        return relay

    def shutdown(self) -> None:
        """Stop the relay thread (tests and graceful shutdown)."""
        with self._lock:
            relay, self._relay = self._relay, None
        if relay is not None:
            relay.stop()


def _state() -> TurboState:
    state = current_app.extensions.get("turbo")
    if not isinstance(state, TurboState):
        raise TurboError("turbocast is not set up on this app: call Turbo(app) or init_app(app)")
    return state


class Turbo:
    """The turbocast Flask extension.

    ``Turbo(app)`` or ``turbo.init_app(app)`` registers the WebSocket endpoint
    (``TURBO_WEBSOCKET_ROUTE``, ``/turbo-stream`` by default), the template
    helper ``turbo_stream_source()`` and a session id for every browser session.

    :param app: the app to set up now; or call :meth:`init_app` later.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._user_loader: UserLoader | None = None
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

    def load_user_id(self) -> str | int | None:
        """The current user's id from the registered loader (``None`` without one)."""
        return self._user_loader() if self._user_loader is not None else None

    def init_app(self, app: Flask) -> None:
        """Set up turbocast on an app.

        :param app: the Flask app.
        """
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        app.extensions["turbo"] = TurboState(app, self)
        app.add_url_rule(
            app.config["TURBO_WEBSOCKET_ROUTE"],
            endpoint=ENDPOINT,
            view_func=_stream_endpoint,
            websocket=True,
        )
        app.before_request(_ensure_session_id)
        app.context_processor(
            lambda: {"turbo_stream_source": turbo_stream_source, "turbo_stream_url": stream_url}
        )

    @property
    def publisher(self) -> Publisher:
        """The current app's :class:`Publisher`."""
        return _state().publisher

    def to_session(self, session_id: str, *streams: Any) -> int:
        """Send streams to one browser session (see :meth:`Publisher.to_session`).

        :param session_id: the session's id.
        :param streams: ``TurboStream`` objects, sent as one message.
        """
        return _state().publisher.to_session(session_id, *streams)

    def to_user(self, user_id: str | int, *streams: Any) -> int:
        """Send streams to every socket of one user (see :meth:`Publisher.to_user`).

        :param user_id: the user's id.
        :param streams: ``TurboStream`` objects, sent as one message.
        """
        return _state().publisher.to_user(user_id, *streams)

    def to_stream(self, name: str, *streams: Any) -> int:
        """Send streams to every page listening to a named stream (:meth:`Publisher.to_stream`).

        :param name: the stream's name.
        :param streams: ``TurboStream`` objects, sent as one message.
        """
        return _state().publisher.to_stream(name, *streams)

    def to_all(self, *streams: Any) -> int:
        """Send streams to every socket (see :meth:`Publisher.to_all`).

        :param streams: ``TurboStream`` objects, sent as one message.
        """
        return _state().publisher.to_all(*streams)


def _ensure_session_id() -> None:
    # No session for the socket itself, static files, or requests that matched no route.
    if request.endpoint not in (None, ENDPOINT, "static"):
        session_id()


def _refuse(status: int, reason: str, **extra: Any) -> Response:
    logger.warning(
        "turbocast: refused WebSocket handshake: %s",
        reason,
        extra={"turbo_status": status, "turbo_remote_addr": request.remote_addr, **extra},
    )
    return Response(f"{reason}\n", status=status, mimetype="text/plain")


def _origin_refusal(config: Any) -> Response | None:
    # Cross-site WebSocket hijacking: a page elsewhere opening a socket with our cookie.
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not a browser: it could send any cookie it holds anyway
    allowed = {normalize_origin(o) for o in config["TURBO_ALLOWED_ORIGINS"]}
    if "*" in allowed:
        return None
    with suppress(TurboError):
        allowed.add(site_origin())
    if normalize_origin(origin) in allowed:
        return None
    return _refuse(STATUS_BAD_ORIGIN, "origin not allowed", turbo_origin=origin[:200])


def _channels(state: TurboState, sid: str) -> list[str] | Response:
    """The channels this handshake may listen to, or the refusal."""
    config = state.config
    prefix = config["TURBO_CHANNEL_PREFIX"]
    channels = [channel_for(sid, prefix), broadcast_channel(prefix)]
    tokens = request.args.getlist("streams")
    if len(tokens) > int(config["TURBO_MAX_STREAMS_PER_SOCKET"]):
        return _refuse(STATUS_BAD_STREAM, "too many streams")
    signer = StreamSigner(config["SECRET_KEY"])
    for token in tokens:
        try:
            channels.append(stream_channel(signer.unsign(token), prefix))
        except InvalidChannelError:
            return _refuse(STATUS_BAD_STREAM, "invalid stream signature")
    try:
        user_id = state.turbo.load_user_id()
        if user_id is not None:
            channels.append(user_channel(user_id, prefix))
    except InvalidChannelError:
        logger.exception("turbocast: the user loader returned an unusable id")
        return _refuse(STATUS_NO_SESSION, "invalid user id")
    return channels


def _stream_endpoint() -> Response:
    state = _state()
    config = state.config
    refusal = _origin_refusal(config)
    if refusal is not None:
        return refusal
    sid = session.get(SESSION_KEY)
    if not valid_session_id(sid):
        cookie = config.get("SESSION_COOKIE_NAME", "session")
        reason = "invalid session cookie" if cookie in request.cookies else "no session cookie"
        return _refuse(STATUS_NO_SESSION, reason)
    assert isinstance(sid, str)
    channels = _channels(state, sid)
    if isinstance(channels, Response):
        return channels
    with state.socket_slot(sid) as granted:
        if not granted:
            return _refuse(STATUS_TOO_MANY_SOCKETS, "too many sockets for this session")
        return _serve(state, sid, channels)


def _serve(state: TurboState, sid: str, channels: list[str]) -> Response:
    config = state.config
    outbox = Outbox(int(config["TURBO_OUTBOX_SIZE"]))
    try:
        conn = TurboConnection(
            request.environ,
            outbox,
            ping_interval=float(config["TURBO_PING_INTERVAL"]),
            send_timeout=float(config["TURBO_SEND_TIMEOUT"]),
            max_incoming_bytes=int(config["TURBO_MAX_INCOMING_BYTES"]),
            max_incoming_rate=int(config["TURBO_MAX_INCOMING_RATE"]),
        )
    except Exception as exc:  # noqa: BLE001 - wsproto rejects malformed upgrades
        if isinstance(exc, BadRequest):
            raise
        return _refuse(400, f"bad WebSocket handshake ({exc.__class__.__name__})")
    relay = state.relay()
    sub = relay.attach(channels, outbox)
    logger.info(
        "turbocast: socket open",
        extra={"turbo_session": sid[:8], "turbo_channels": len(channels)},
    )
    try:
        reason = conn.serve()
    finally:
        relay.detach(sub)
    closing = outbox.closing
    refused = outbox.dropped or (closing is not None and closing.code is not None)
    logger.log(
        logging.WARNING if refused else logging.INFO,
        "turbocast: socket closed: %s",
        reason,
        extra={"turbo_session": sid[:8], "turbo_dropped": outbox.dropped},
    )
    return _WebSocketResponse(conn.mode)


class _WebSocketResponse(Response):
    # The socket was taken over by the WebSocket: tell the server not to write an
    # HTTP response on it. The same per-server handling as flask-sock's route.
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        if self.mode == "eventlet":  # pragma: no cover - needs eventlet
            import eventlet.wsgi

            local = getattr(eventlet.wsgi, "WSGI_LOCAL", None)
            if local is None:
                return eventlet.wsgi.ALREADY_HANDLED
            local.already_handled = True
            return []
        return []
