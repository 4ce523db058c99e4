"""Debouncing refreshes: one ``refresh`` of a named stream per window, across every process.

A change that many pages show (a board, a list) can ask every page of its stream to load
itself again, ``<turbo-stream action="refresh">``, instead of aiming streams at elements.
A change rarely comes alone: a form that saves twenty rows, a job that touches a parent
row after each child. ``turbo.refresh_stream(name)`` lets them all ask, and sends one
refresh per stream per window (``TURBO_REFRESH_DEBOUNCE`` seconds):

- **Trailing, fixed window.** The first call for a stream opens its window and schedules
  one send at the window's end; every call for that stream until then, from any web
  process or worker, is taken into that send and returns at once. The send closes the
  window first, then publishes, so a change made after it opens the next window and gets
  a refresh of its own: no change goes without a refresh that shows it. The window does
  not restart with each call, so a steady stream of changes still refreshes once a window.
- **Request id.** A call in a Flask request takes the ``X-Turbo-Request-Id`` that Turbo 8
  sends with its fetches; the tab whose recent request had that id skips the refresh, as
  its own response already shows the change. When every call taken into a window carried
  the same id, the refresh carries it; when they differ, or any carried none (a worker,
  beat, a script), the refresh carries none and every tab refreshes: a skipped refresh
  could hide another request's change, an extra one only costs a fetch.
- **Where the window lives.** In Redis, next to the history: a hash
  ``<prefix>:refresh:<name>`` holding the opener's token and the request id so far,
  opened and closed by two Lua scripts, so two processes never both open a window. It
  expires a little after the window (``_LATE_SECONDS``): a send that comes later than that
  finds nothing and still sends, without a request id.
- **Who sends.** With a Celery app (as for the ``*_later`` calls), the opener enqueues
  ``turbocast.send_refresh`` with ``countdown=`` the window: the broker holds it, so it
  survives the web process, and it retries while Redis is unreachable. Without one (or
  when the broker refuses it), a timer thread of the opener's process sends it: a
  normal exit waits for it (it is not a daemon thread), a crash or SIGKILL within the
  window loses that send, and the next change refreshes again.

What Turbo does with it is set by the page: ``<meta name="turbo-refresh-method"
content="morph">`` morphs the body instead of replacing it, and ``<meta
name="turbo-refresh-scroll" content="preserve">`` keeps the scroll position. Turbo
debounces refreshes in the browser too (``pageRefreshDebouncePeriod``, 150 ms), which
does not span tabs, processes or a window longer than that: hence this module.

References:

- turbo-rails' ``Turbo::Debouncer`` (app/models/turbo/debouncer.rb): ``DEFAULT_DELAY =
  0.5``; each call cancels the scheduled task and schedules a new one (trailing, the
  delay restarting with each call), per thread (``Turbo::ThreadDebouncer``), keyed on the
  streamables and the request id (``refresh_debouncer_for`` in
  app/channels/turbo/streams/broadcasts.rb, which ``broadcast_refresh_later_to`` uses).
- turbo-rails' ``broadcast_refresh_later_to(*streamables, request_id:
  Turbo.current_request_id)`` (app/models/concerns/turbo/broadcastable.rb), the id set
  from the ``X-Turbo-Request-Id`` header (test/refreshes/request_id_tracking_test.rb).
- Turbo 8 (@hotwired/turbo 8.0.23, as turbocast ships it): ``fetchWithTurboHeaders`` adds
  ``X-Turbo-Request-Id`` and remembers the last 20 ids (``recentRequests``);
  ``Session.refresh`` skips a refresh whose ``request-id`` is one of them, and is
  debounced by ``pageRefreshDebouncePeriod = 150``.
- Turbo's handbook, "Smooth page refreshes with morphing"
  (https://turbo.hotwired.dev/handbook/page_refreshes): ``turbo-refresh-method`` and
  ``turbo-refresh-scroll``; hotwired/turbo commit 99d0755 adds ``method`` and ``scroll``
  to the refresh action.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import redis
from flask import has_request_context, request

from .channels import check_stream_name, refresh_key
from .errors import CeleryNotConfiguredError, InvalidStreamError, PublishError
from .extension import CURRENT_REQUEST, TurboState, _Current, _state
from .publisher import Publisher
from .settings import DEFAULTS
from .streams import TurboStream

if TYPE_CHECKING:
    from celery import Celery

try:
    from celery import shared_task
except ModuleNotFoundError:
    _have_celery = False
else:
    _have_celery = True

logger = logging.getLogger("turbocast.refreshes")

#: The header Turbo 8 sends with each of its fetches.
REQUEST_ID_HEADER = "X-Turbo-Request-Id"
#: The registered name of the task that sends a window's refresh.
TASK_NAME = "turbocast.send_refresh"
DEFAULT_DEBOUNCE: float = DEFAULTS["TURBO_REFRESH_DEBOUNCE"]

# Turbo's ids are UUIDs; anything else in the header is ignored, not echoed into pages.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# How long after its end a window's key outlives it: a send later than that (a busy
# worker, a paused process) finds it gone and sends without a request id.
_LATE_SECONDS = 2.0


# KEYS[1] the window. ARGV: request id ('' for none), the caller's token, time to live (ms).
# Opens the window (returns 1) or takes the call into the open one (returns 0), keeping
# the request id only while every call agrees on it.
_OPEN = """
if redis.call('HSETNX', KEYS[1], 't', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'r', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'r', '')
end
return 0
"""

# KEYS[1] the window; ARGV[1] the opener's token. Returns {1, request id} and deletes the
# window when it is the opener's; {1, ''} when it expired (send anyway); {0, ''} when
# another window is open (its opener sends).
_CLOSE = """
local token = redis.call('HGET', KEYS[1], 't')
if token == ARGV[1] then
  local request_id = redis.call('HGET', KEYS[1], 'r')
  redis.call('DEL', KEYS[1])
  return {1, request_id}
end
if token then
  return {0, ''}
end
return {1, ''}
"""


class RefreshWindows:
    """The open refresh windows, in Redis: one hash a stream, ``{t: token, r: request id}``.

    :param client: the Redis client (the publisher's).
    :param prefix: the key namespace (``TURBO_CHANNEL_PREFIX``).
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._open = client.register_script(_OPEN)
        self._close = client.register_script(_CLOSE)

    def open(self, name: str, request_id: str | None, token: str, ttl: float) -> bool:
        """Open the stream's window, or take this call into the one that is open.

        :param name: the stream's name.
        :param request_id: the call's request id, or ``None``.
        :param token: the caller's token, which closes the window if this call opens it.
        :param ttl: seconds the window's key lives.
        :returns: ``True`` when this call opened the window: its caller schedules the send.
        """
        args = (request_id or "", token, max(1, round(ttl * 1000)))
        return bool(self._open(keys=[refresh_key(name, self.prefix)], args=args))

    def close(self, name: str, token: str) -> tuple[bool, str | None]:
        """Close the window that ``token`` opened.

        :param name: the stream's name.
        :param token: the opener's token.
        :returns: whether to send, and the request id the refresh carries.
        """
        send, request_id = self._close(keys=[refresh_key(name, self.prefix)], args=(token,))
        if isinstance(request_id, bytes):
            request_id = request_id.decode()
        return bool(send), request_id or None


def check_request_id(request_id: object) -> str | None:
    """Return ``request_id`` if a refresh can carry it, or raise :class:`InvalidStreamError`.

    :param request_id: ``None``, or an id such as Turbo's (a UUID).
    """
    if request_id is None:
        return None
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise InvalidStreamError(
            f"{request_id!r} is not a request id (1-128 characters of A-Z a-z 0-9 _ . : -)"
        )
    return request_id


def current_request_id() -> str | None:
    """The ``X-Turbo-Request-Id`` of the Flask request being handled.

    ``None`` outside a request (a Celery task, beat, a script), when Turbo did not send
    one (a plain form post), or when it is not a usable id.
    """
    if not has_request_context():
        return None
    value = request.headers.get(REQUEST_ID_HEADER)
    return value if value is not None and _REQUEST_ID_RE.fullmatch(value) else None


class Refresher:
    """Debounced refreshes of named streams, sent with one publisher.

    What ``turbo.refresh_stream`` uses; a process without a Flask app (a script, a worker
    of another framework) can use it alike::

        refresher = Refresher(Publisher.from_config(config), debounce=0.5)
        refresher.refresh("board:42")

    :param publisher: the publisher that sends the refresh (and whose Redis keeps windows).
    :param debounce: the window, in seconds (``TURBO_REFRESH_DEBOUNCE``); 0 sends each
        refresh at once.
    :param celery_app: the Celery app to enqueue the send on; ``None``: a timer thread.
    """

    #: Where the windows are kept (built from the publisher's client and prefix).
    windows_class: ClassVar[type[RefreshWindows]] = RefreshWindows
    #: What sends from this process when there is no Celery app (``threading.Timer``'s signature).
    timer_class: ClassVar[type[threading.Timer]] = threading.Timer

    def __init__(
        self,
        publisher: Publisher,
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        celery_app: Celery | None = None,
    ) -> None:
        if debounce < 0:
            raise ValueError("TURBO_REFRESH_DEBOUNCE must be 0 or more seconds")
        self.publisher = publisher
        self.debounce = debounce
        self.celery_app = celery_app
        self.windows = self.windows_class(publisher.client, publisher.prefix)

    def refresh(self, name: str, request_id: str | None = None) -> bool:
        """Ask every page of a named stream to refresh, once per window.

        :param name: the stream's name, such as ``"board:42"``.
        :param request_id: the ``X-Turbo-Request-Id`` of the request that made the change.
        :returns: ``True`` when this call opened the window (and scheduled the send),
            ``False`` when an open window took it in.
        :raises InvalidChannelError: a name that cannot name a stream.
        :raises InvalidStreamError: a malformed request id.
        :raises PublishError: Redis did not answer (as for any push).
        """
        check_stream_name(name)
        check_request_id(request_id)
        if not self.debounce:
            self.publisher.to_stream(name, TurboStream.refresh(request_id=request_id))
            return True
        token = secrets.token_hex(16)
        try:
            opened = self.windows.open(name, request_id, token, self.debounce + _LATE_SECONDS)
        except redis.RedisError as exc:
            extra = {"turbo_stream": name, "turbo_error": repr(exc)}
            logger.error("refresh not asked", extra=extra)
            raise PublishError(f"refresh of {name!r} not asked: Redis did not answer") from exc
        if not opened:
            return False
        self._schedule(name, token)
        return True

    def send(self, name: str, token: str) -> int:
        """Close the window ``token`` opened and send its refresh (at the window's end).

        :param name: the stream's name.
        :param token: the opener's token.
        :returns: how many web processes received it (0 also when another window was open).
        :raises PublishError: Redis did not take the refresh.
        """
        send, request_id = self.windows.close(name, token)
        if not send:
            return 0
        return self.publisher.to_stream(name, TurboStream.refresh(request_id=request_id))

    def _schedule(self, name: str, token: str) -> None:
        if self.celery_app is not None:
            try:
                self.celery_app.send_task(TASK_NAME, args=[name, token], countdown=self.debounce)
                return
            except Exception as exc:  # noqa: BLE001 - any broker failure: a timer beats losing it
                logger.warning(
                    "could not enqueue a refresh, sending it from this process",
                    extra={"turbo_stream": name, "turbo_error": repr(exc)},
                )
        # Not a daemon: a normal exit waits for it, at most one window.
        timer = self.timer_class(self.debounce, self._send_from_timer, (name, token))
        timer.name = "turbo-refresh"
        timer.start()

    def _send_from_timer(self, name: str, token: str) -> None:
        try:
            self.send(name, token)
        except (redis.RedisError, PublishError) as exc:
            logger.error("refresh not sent", extra={"turbo_stream": name, "turbo_error": repr(exc)})


def _celery_of(state: TurboState) -> Celery | None:
    if not _have_celery:
        return None
    from .tasks import celery_app_of

    try:
        return celery_app_of(state)
    except CeleryNotConfiguredError:
        return None


def refresher() -> Refresher:
    """The current Flask app's :class:`Refresher`: its publisher, window and Celery app."""
    state = _state()
    return Refresher(
        state.publisher,
        debounce=float(state.config["TURBO_REFRESH_DEBOUNCE"]),
        celery_app=_celery_of(state),
    )


def refresh_stream(name: str, *, request_id: str | None | _Current = CURRENT_REQUEST) -> None:
    """Ask every page of a named stream to refresh, debounced across every process.

    The same as ``turbo.refresh_stream(name)``; works in a view, in a hook the view's
    thread runs (SQLAlchemy's ``after_commit``) and in a Celery task in the app context.

    :param name: the stream's name, such as ``"board:42"``.
    :param request_id: the id the refresh carries, so the tab that made the change skips
        it; by default the current request's ``X-Turbo-Request-Id`` (none outside a request);
        ``None`` for none.
    :raises InvalidChannelError: a name that cannot name a stream.
    :raises InvalidStreamError: a malformed request id.
    """
    if request_id is CURRENT_REQUEST:
        request_id = current_request_id()
    refresher().refresh(name, request_id)


def _send_refresh(name: str, token: str) -> int:
    """Send a window's refresh (runs in a worker, in the app context).

    :param name: the stream's name.
    :param token: the window opener's token.
    """
    return refresher().send(name, token)


if _have_celery:
    from .tasks import RETRY_OPTIONS

    #: The task that sends a window's refresh; only with Celery installed.
    send_refresh: Any = shared_task(
        name=TASK_NAME,
        # A retry finds its window closed (or expired) and sends without a request id.
        **{**RETRY_OPTIONS, "autoretry_for": (PublishError, redis.RedisError)},
    )(_send_refresh)
