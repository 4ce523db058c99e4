"""The stream endpoints: a socket's life, in order, for WebSockets and Server-Sent Events.

1. **Admit**: origin, signed session cookie, signed stream names, user, the
   positions the page brings, the per-session cap. A refusal answers with an
   HTTP status and logs a line. The channels: the session's, everyone's, the
   user's and the named streams'; or, for a page's second stream source
   (``only=streams``), its named streams alone.
2. **Subscribe, confirmed by Redis**: the relay registers the socket's outbox
   and says when Redis has confirmed every channel (``TURBO_REDIS_TIMEOUT``,
   else 503). From then on everything published reaches the outbox.
3. **Replay**: each channel's history after the page's position, merged across
   channels in publish order; where the history no longer reaches, a gap.
4. **Live**: the 101 (or the event stream's 200) goes out; the writer sends the
   replay, then what the outbox holds, its cursor dropping what both gave.

Everything that touches Redis happens before the 101, so it can still be
refused with an HTTP status. After the 101, every failure closes the socket
with a close code and cleans up (reader, relay, the session's slot).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Response, request, session

from . import handoff, metrics
from .channels import (
    history_key,
    label_for,
    new_socket_id,
    stream_channel,
    user_key,
    valid_session_id,
    valid_socket_id,
)
from .connection import CLOSE_INTERNAL_ERROR, WebSocket
from .errors import HandshakeError, InvalidChannelError, TurboError
from .extension import TurboState, _state
from .helpers import SESSION_KEY, SOCKET_PARAM, STREAMS_ONLY, normalize_origin, site_origin
from .message import REFRESH_HTML, Cursor, Message, published_seconds
from .outbox import CLOSE_OUTBOX_OVERFLOW, Outbox
from .relay import Subscription
from .signing import PRESENCE_SALT, StreamSigner

logger = logging.getLogger("turbocast")

#: HTTP status of a handshake without a valid session cookie.
STATUS_NO_SESSION = 403
#: HTTP status of a handshake from a page of another origin.
STATUS_BAD_ORIGIN = 403
#: HTTP status of a handshake asking for a stream without a valid signature.
STATUS_BAD_STREAM = 403
#: HTTP status of a handshake of a session or user signed out meanwhile (see
#: :meth:`~turbocast.relay.Relay.signed_out`).
STATUS_SIGNED_OUT = 403
#: HTTP status of a handshake with a malformed ``since`` position.
STATUS_BAD_POSITION = 400
#: HTTP status of a handshake past ``TURBO_MAX_SOCKETS_PER_SESSION``.
STATUS_TOO_MANY_SOCKETS = 429
#: HTTP status of a handshake to a server that serves one request at a time per process
#: (gunicorn's sync worker): an open page would hold its only worker.
STATUS_SERVER_CANNOT_HOLD = 500
#: HTTP status of a handshake when Redis did not confirm the subscription or give the
#: history within ``TURBO_REDIS_TIMEOUT``.
STATUS_REDIS_UNAVAILABLE = 503

# The largest part of a stream id (ms or seq): Redis keeps both as unsigned 64-bit.
_MAX_ID_PART = 2**64 - 1

_POSITION_RE = re.compile(r"([A-Za-z0-9_.:@/=+-]{1,210})~([0-9]{1,20}-[0-9]{1,20})")


@dataclass
class Admission:
    """Who a client is and what it listens to, once every check passed."""

    sid: str
    channels: list[str]
    since: dict[str, str]
    #: The socket's id (WebSockets only: an event stream cannot be told its id).
    socket_id: str | None = None
    #: Its user's channel key, or ``None`` when nobody is signed in.
    user: str | None = None
    #: When its admission began (``time.monotonic()``): a sign-out after it refuses it.
    started: float = 0.0
    #: The named streams whose presence it takes part in (each among its streams).
    presence: list[str] = field(default_factory=list)


def _refuse(
    status: int, reason: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    logger.warning(
        "refused WebSocket handshake: %s",
        reason,
        extra={"turbo_status": status, "turbo_remote_addr": request.remote_addr, **extra},
    )
    return Response(f"{reason}\n", status=status, mimetype="text/plain", headers=headers)


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
    tokens = request.args.getlist("streams")
    if len(tokens) > int(state.config["TURBO_MAX_STREAMS_PER_SOCKET"]):
        return _refuse(STATUS_BAD_STREAM, "too many streams")
    signer = StreamSigner(state.config["SECRET_KEY"])
    try:
        names = [signer.unsign(token) for token in tokens]
    except InvalidChannelError:
        return _refuse(STATUS_BAD_STREAM, "invalid stream signature")
    key, value = STREAMS_ONLY
    shared = request.args.get(key) != value
    if not shared and not names:
        return _refuse(STATUS_BAD_STREAM, "only=streams without a stream")
    try:
        return state.page_channels(sid, names, shared=shared)
    except InvalidChannelError:
        logger.exception("the user loader returned an unusable id")
        return _refuse(STATUS_NO_SESSION, "invalid user id")


def parse_positions(values: list[str]) -> dict[str, str] | None:
    """``["s~1700-0", "b~1700-2"]`` (or one comma-separated value) as ``{label: id}``.

    :param values: ``since`` query values, or a ``Last-Event-ID`` split on commas.
    :returns: ``None`` when a value is malformed.
    """
    positions: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            if not part:
                continue
            match = _POSITION_RE.fullmatch(part)
            if match is None:
                return None
            ms, _, seq = match.group(2).partition("-")
            if int(ms) > _MAX_ID_PART or int(seq) > _MAX_ID_PART:
                return None
            positions[match.group(1)] = match.group(2)
    return positions


def _server_refusal() -> Response | None:
    # A server that serves one request at a time per process (gunicorn's sync worker,
    # Werkzeug unthreaded) would give its only worker to one open page: refuse it.
    if request.environ.get("wsgi.multithread"):
        return None
    logger.error(
        "this server serves one request at a time per process, so one open "
        "page would hold it: run gunicorn with --threads (gthread) or -k gevent",
        extra={"turbo_server": request.environ.get("SERVER_SOFTWARE")},
    )
    return Response(
        "this server cannot hold a stream: it serves one request at a time\n",
        status=STATUS_SERVER_CANNOT_HOLD,
        mimetype="text/plain",
    )


def _admit(state: TurboState, positions: list[str]) -> Admission | Response:
    """Every check a client must pass, in order; the admission or the refusal."""
    started = time.monotonic()
    refusal = _server_refusal() or _origin_refusal(state.config)
    if refusal is not None:
        return refusal
    sid = session.get(SESSION_KEY)
    if not valid_session_id(sid):
        cookie = state.config.get("SESSION_COOKIE_NAME", "session")
        reason = "invalid session cookie" if cookie in request.cookies else "no session cookie"
        return _refuse(STATUS_NO_SESSION, reason)
    assert isinstance(sid, str)
    channels = _channels(state, sid)
    if isinstance(channels, Response):
        return channels
    since = parse_positions(positions)
    if since is None:
        return _refuse(STATUS_BAD_POSITION, "invalid since position")
    presence = _presence(state, channels)
    if isinstance(presence, Response):
        return presence
    user = _user(state, channels)
    return Admission(sid, channels, since, user=user, started=started, presence=presence)


def _presence(state: TurboState, channels: list[str]) -> list[str] | Response:
    """The streams whose presence a socket asked for: signed, and each among its streams."""
    tokens = request.args.getlist("presence")
    if not tokens:
        return []
    signer = StreamSigner(state.config["SECRET_KEY"], salt=PRESENCE_SALT)
    try:
        names = list(dict.fromkeys(signer.unsign(token) for token in tokens))
    except InvalidChannelError:
        return _refuse(STATUS_BAD_STREAM, "invalid presence signature")
    prefix = state.config["TURBO_CHANNEL_PREFIX"]
    if any(stream_channel(name, prefix) not in channels for name in names):
        return _refuse(STATUS_BAD_STREAM, "presence of a stream the socket does not listen to")
    return names


def _arrive(state: TurboState, admission: Admission, held: ExitStack) -> Response | None:
    """Count the socket in its streams' presence (announcing a join); undone with ``held``."""
    if not admission.presence:
        return None
    keeper = state.keeper()
    try:
        connection = keeper.arrive(admission.presence, admission.user)
    except redis.RedisError as exc:
        return _refuse(
            STATUS_REDIS_UNAVAILABLE, "Redis unavailable: presence not recorded",
            turbo_error=repr(exc),
        )  # fmt: skip
    held.callback(keeper.depart, admission.presence, admission.user, connection)
    return None


def _user(state: TurboState, channels: list[str]) -> str | None:
    """The channel key of the socket's user, for ``disconnect_user``."""
    head = f"{state.config['TURBO_CHANNEL_PREFIX']}:user:"
    for channel in channels:
        if channel.startswith(head):
            return channel[len(head) :]
    # A page's second source (only=streams) has no user channel: ask the loader.
    try:
        user_id = state.turbo.load_user_id()
        return user_key(user_id) if user_id is not None else None
    except InvalidChannelError:
        return None


def _socket_id() -> str:
    """The id of a WebSocket being admitted: the one it was told before, else a new one.

    A reconnecting ``<turbocast-stream-source>`` sends back the id it was given
    (``?socket=``), so a push that excluded its tab while it was away is not
    replayed to it. Claiming another socket's id only leaves the claimant out.
    """
    given = request.args.get(SOCKET_PARAM)
    return given if given is not None and valid_socket_id(given) else new_socket_id()


def _replay(state: TurboState, admission: Admission) -> list[Message]:
    """What the histories hold after the client's positions, merged in publish order.

    A channel whose history no longer reaches the client's position gives one
    refresh (a gap) instead of its entries.

    :raises redis.RedisError: when Redis does not answer (the handshake gets 503).
    """
    prefix = state.config["TURBO_CHANNEL_PREFIX"]
    wanted = []  # (channel, label, position) of each channel the client brings a position for
    for channel in admission.channels:
        label = label_for(channel, prefix)
        position = admission.since.get(label)
        if position is not None:
            wanted.append((channel, label, position))
    # One snapshot of every history: what comes live afterwards is all newer.
    reads = [(history_key(channel, prefix), position) for channel, _, position in wanted]
    replay: list[Message] = []
    own = admission.sid.encode()
    own_socket = admission.socket_id.encode() if admission.socket_id is not None else None
    results = state.publisher.history.since_many(reads)
    for (channel, label, position), (entries, gap) in zip(wanted, results, strict=True):
        raw = channel.encode()
        if gap:
            newest = entries[-1][0] if entries else position
            replay.append(Message(raw, label, newest, REFRESH_HTML, gap=True))
            logger.info(
                "client was away longer than the history holds; sent a refresh",
                extra={"turbo_label": label, "turbo_since": position},
            )
        else:
            # A message that excludes this socket or its session is not replayed to it either.
            replay.extend(
                Message(raw, label, message_id, html, published=published_seconds(published))
                for message_id, html, exclude, exclude_socket, published in entries
                if exclude != own and (exclude_socket is None or exclude_socket != own_socket)
            )
    # Ids come from one clock across channels: their order is the publish order.
    replay.sort(key=lambda m: m.key or (0, 0))
    return replay


def _subscribe(
    state: TurboState, admission: Admission, outbox: Outbox, held: ExitStack
) -> list[Message] | Response:
    """Steps 2 and 3: attach to the relay, wait for Redis's confirmation, read the replay.

    The detach is pushed onto ``held``. A refusal (503) when Redis does not answer
    within ``TURBO_REDIS_TIMEOUT``.
    """
    deadline = time.monotonic() + float(state.config["TURBO_REDIS_TIMEOUT"])
    try:
        relay = state.relay()
    except redis.RedisError as exc:  # (a Redis Cluster's clients connect when made)
        return _refuse(
            STATUS_REDIS_UNAVAILABLE, "Redis unavailable: no relay", turbo_error=repr(exc)
        )
    sub: Subscription = relay.attach(
        admission.channels, outbox, admission.sid, admission.socket_id, admission.user
    )
    held.callback(relay.detach, sub)
    if not sub.ready.wait(max(0.0, deadline - time.monotonic())):
        return _refuse(STATUS_REDIS_UNAVAILABLE, "Redis unavailable: subscription not confirmed")
    # A sign-out that arrived while this socket was admitted found no outbox to close;
    # one arriving from now on closes the outbox (attached, and the relay is subscribed).
    if relay.signed_out(admission.sid, admission.user, admission.started):
        return _refuse(STATUS_SIGNED_OUT, "signed out")
    try:
        return _replay(state, admission)
    except redis.RedisError as exc:
        return _refuse(
            STATUS_REDIS_UNAVAILABLE, "Redis unavailable: history not read", turbo_error=repr(exc)
        )


def _log_closed(sid: str, outbox: Outbox, reason: str, *, gave_up: bool = False) -> None:
    """One line per closed socket: a warning when it was refused or given up on.

    :param gave_up: the server dropped the peer (a stuck write, no pong).
    """
    closing = outbox.closing
    refused = gave_up or (closing is not None and closing.code not in (None, 1001))
    logger.log(
        logging.WARNING if refused else logging.INFO,
        "socket closed: %s",
        reason,
        extra={"turbo_session": sid[:8], "turbo_dropped": outbox.dropped},
    )


def _count_closed(transport: str, outbox: Outbox) -> None:
    # Once detached from the relay: what its outbox threw away is final.
    closing = outbox.closing
    overflowed = closing is not None and closing.code == CLOSE_OUTBOX_OVERFLOW
    metrics.socket_closed(transport, outbox.dropped, overflowed=overflowed)


# -- WebSocket ------------------------------------------------------------------------------


def websocket_endpoint() -> Response:
    """``TURBO_WEBSOCKET_ROUTE``: admit, subscribe, replay, then relay live messages."""
    state = _state()
    config = state.config
    admission = _admit(state, request.args.getlist("since"))
    if isinstance(admission, Response):
        return admission
    admission.socket_id = _socket_id()
    with ExitStack() as held:
        if not held.enter_context(state.socket_slot(admission.sid)):
            return _refuse(STATUS_TOO_MANY_SOCKETS, "too many sockets for this session")
        outbox = Outbox(int(config["TURBO_OUTBOX_BYTES"]))
        # gunicorn -k gevent: the socket goes on in a lean greenlet of its own.
        lean = handoff.lean_environ(request.environ)
        if lean is not None:
            # (Its socket only: a handed-off socket keeps none of its headers.)
            held.callback(lean["gunicorn.socket"].close)
        try:
            ws = WebSocket(
                lean or request.environ,
                outbox,
                send_timeout=float(config["TURBO_SEND_TIMEOUT"]),
                max_incoming_bytes=int(config["TURBO_MAX_INCOMING_BYTES"]),
                max_incoming_rate=int(config["TURBO_MAX_INCOMING_RATE"]),
                deflate=bool(config["TURBO_WEBSOCKET_DEFLATE"]),
            )
        except HandshakeError as exc:
            return _refuse(exc.status, f"bad WebSocket handshake: {exc}", headers=exc.headers)
        replay = _subscribe(state, admission, outbox, held)
        if isinstance(replay, Response):
            return replay
        refusal = _arrive(state, admission, held)
        if refusal is not None:
            return refusal
        try:
            ws.accept()
        except Exception:  # noqa: BLE001 - the peer or the socket failed during the 101
            logger.exception("WebSocket handshake failed after it was admitted")
            return _WebSocketResponse(ws.mode)  # no HTTP on a socket that may have its 101
        logger.info(
            "socket open",
            extra={"turbo_session": admission.sid[:8], "turbo_channels": len(admission.channels)},
        )
        # From here the writer owns the socket's slot and subscription, and ends them.
        life = held.pop_all()
        metrics.socket_opened(ws.transport)
    # What the writer keeps of the admission, for as long as the page is open.
    sid, socket_id = admission.sid, admission.socket_id

    def serve() -> None:
        try:
            with life:
                try:
                    reason = ws.serve(replay, socket_id=socket_id)
                except Exception:  # noqa: BLE001 - logged; the socket is closed with 1011
                    logger.exception("socket writer failed")
                    ws.abort(CLOSE_INTERNAL_ERROR, "internal error")
                    outbox.close(CLOSE_INTERNAL_ERROR, "internal error")
                    reason = "internal error"
                # No close was asked for, yet the writer stopped: it gave up on the peer.
                _log_closed(sid, outbox, reason, gave_up=outbox.closing is None)
        finally:
            _count_closed(ws.transport, outbox)  # detached: what it threw away is final

    if lean is None:
        serve()
    else:
        handoff.spawn(serve)
    return _WebSocketResponse(ws.mode)


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


# -- Server-Sent Events ---------------------------------------------------------------------


def sse_endpoint() -> Response:
    """``TURBO_SSE_ROUTE``: the same stream as Server-Sent Events, for networks without WebSockets.

    ``EventSource`` reconnects by itself and sends the last event's id back as
    ``Last-Event-ID``; every event's id is the client's position in all its channels.
    The same life as a WebSocket's: admitted, subscribed and replayed before the 200.
    """
    state = _state()
    last_event_id = request.headers.get("Last-Event-ID")
    positions = [last_event_id] if last_event_id else request.args.getlist("since")
    admission = _admit(state, positions)
    if isinstance(admission, Response):
        return admission
    with ExitStack() as held:
        if not held.enter_context(state.socket_slot(admission.sid)):
            return _refuse(STATUS_TOO_MANY_SOCKETS, "too many sockets for this session")
        outbox = Outbox(int(state.config["TURBO_OUTBOX_BYTES"]))
        replay = _subscribe(state, admission, outbox, held)
        if isinstance(replay, Response):
            return replay
        refusal = _arrive(state, admission, held)
        if refusal is not None:
            return refusal
        # Ended when the server closes the response, whether or not it was ever iterated.
        life = held.pop_all()
    life.callback(_log_closed, admission.sid, outbox, "event stream ended")
    metrics.socket_opened("sse")
    response = Response(
        _sse_events(state, admission, outbox, replay),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(life.close)
    response.call_on_close(lambda: _count_closed("sse", outbox))  # after the detach
    return response


def _sse_events(
    state: TurboState, admission: Admission, outbox: Outbox, replay: list[Message]
) -> Iterator[str]:
    interval = float(state.config["TURBO_PING_INTERVAL"]) or 25.0
    cursor = Cursor()
    positions = dict(admission.since)
    yield "retry: 1000\n\n"
    batch, replaying = replay, True
    while True:
        admitted = [m for m in batch if cursor.admit(m)]
        if admitted:
            yield "".join(_sse_event(m, positions) for m in admitted)
            if replaying:  # (live messages are counted once per process, by the relay)
                metrics.replayed(admitted)
        _, batch, closing = outbox.drain(interval)
        replaying = False
        if closing is not None:
            return
        if not batch:
            yield ": ping\n\n"  # finds dead peers; keeps proxies from timing out


def _sse_event(message: Message, positions: dict[str, str]) -> str:
    if message.id is not None:
        positions[message.label] = message.id
    event_id = ",".join(f"{label}~{pos}" for label, pos in positions.items())
    # EventSource ends a line at CR, LF or CRLF; HTML parsing turns CRs into LFs anyway.
    text = message.html.decode().replace("\r\n", "\n").replace("\r", "\n")
    data = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"id: {event_id}\n{data}\n"
