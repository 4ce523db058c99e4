"""Capturing pushes in tests, without Redis: what ``turbo_broadcasts`` (the pytest plugin,
:mod:`turbocast.testing`) hands a test.

:func:`capture_broadcasts` installs, on one Flask app and for the length of a ``with``
block:

- a :class:`CapturingPublisher` (``TurboState.use_publisher``): every push of the app,
  ``turbo.to_session/to_user/to_stream/to_all``, a batch (when it is sent), a refresh, a
  model broadcast sent inline, is recorded as a :class:`Broadcast` instead of going to
  Redis. Pages render with no stream positions to ask for.
- a :class:`TaskQueue` in place of the app's Celery app for turbocast's own tasks: the
  ``*_later`` calls, the model broadcasts a worker renders and the debounced refreshes'
  sends are queued in memory, never sent to a broker. :meth:`Broadcasts.perform_tasks`
  runs them, each in an app context of its own as a worker would, and their pushes are
  captured. Celery's ``task_always_eager`` does not help there: turbocast enqueues with
  ``send_task``, which ignores it.
- refresh windows kept in memory (not in Redis): refreshes debounce as in production,
  one send per stream per window, the window closing when its send runs.

Tasks an app enqueues on its own Celery app (not through turbocast) are not touched.

References: turbo-rails' ``Turbo::Broadcastable::TestHelper``
(``capture_turbo_stream_broadcasts``, ``assert_turbo_stream_broadcasts``,
``assert_no_turbo_stream_broadcasts``) and ActiveJob's ``perform_enqueued_jobs``.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import redis

from .channels import history_key
from .extension import TurboState
from .history import History, Publication
from .publisher import Publisher
from .refreshes import Refresher, RefreshWindows
from .settings import setting

if TYPE_CHECKING:
    from celery import Celery
    from flask import Flask

_STREAM_RE = re.compile(r"<turbo-stream\b([^>]*)>(.*?)</turbo-stream>", re.DOTALL)
_ATTR_RE = re.compile(r'([\w:-]+)="([^"]*)"')
_SHOWN = 300  # characters of a stream a failure message shows


@dataclass
class Stream:
    """One ``<turbo-stream>`` element of a captured message."""

    #: Its ``action`` attribute.
    action: str
    #: Its ``target`` attribute, or ``None``.
    target: str | None
    #: Its ``targets`` attribute, or ``None``.
    targets: str | None
    #: Every attribute, unescaped.
    attributes: dict[str, str]
    #: The whole element, as sent.
    html: str
    #: The message it came in.
    broadcast: Broadcast = field(repr=False)


@dataclass
class Broadcast:
    """One captured message: where it went, what it held and whom it left out."""

    #: The Redis channel it was published on.
    channel: str
    #: ``"session"``, ``"user"``, ``"stream"`` or ``"all"``.
    audience: str
    #: The session id, the user id or the stream's name (``None`` for everyone).
    name: str | None
    #: The message's HTML: its ``<turbo-stream>`` elements, as sockets would get them.
    html: str
    #: The session id left out (``exclude=``), or ``None``.
    exclude: str | None
    #: The socket id left out (``exclude_socket=``), or ``None``.
    exclude_socket: str | None
    #: Its elements, in order.
    streams: list[Stream] = field(default_factory=list)

    def __str__(self) -> str:
        to = "everyone" if self.audience == "all" else f"{self.audience} {self.name!r}"
        left_out = "".join(
            f" {key}={value!r}"
            for key, value in (("exclude", self.exclude), ("exclude_socket", self.exclude_socket))
            if value is not None
        )
        shown = self.html if len(self.html) <= _SHOWN else self.html[:_SHOWN] + "…"
        return f"to {to}{left_out}: {shown}"


def parse_broadcast(
    channel: str, payload: bytes, exclude: str | None, exclude_socket: str | None, prefix: str
) -> Broadcast:
    """A captured message, its channel read back into an audience.

    :param channel: the channel it was published on.
    :param payload: its bytes.
    :param exclude: the session id left out.
    :param exclude_socket: the socket id left out.
    :param prefix: the app's ``TURBO_CHANNEL_PREFIX``.
    """
    rest = channel.removeprefix(f"{prefix}:")
    kind, _, name = rest.partition(":")
    audience, named = ("all", None) if rest == "broadcast" else (kind, name)
    text = payload.decode("utf-8")
    broadcast = Broadcast(channel, audience, named, text, exclude, exclude_socket)
    for match in _STREAM_RE.finditer(text):
        attributes = {k: html.unescape(v) for k, v in _ATTR_RE.findall(match.group(1))}
        broadcast.streams.append(
            Stream(
                attributes.get("action", ""),
                attributes.get("target"),
                attributes.get("targets"),
                attributes,
                match.group(0),
                broadcast,
            )
        )
    return broadcast


class _OfflineHistory(History):
    """Channel histories of a capturing publisher: empty, and never asked of Redis."""

    def positions(self, keys: Sequence[str]) -> list[str]:
        return ["0-0" for _ in keys]


class CapturingPublisher(Publisher):
    """A publisher that records each message in ``sent`` instead of publishing it.

    It checks what a real one checks (the message's size, the ids left out, the
    channel) and returns 0 receivers: nobody listens.

    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :param max_message_bytes: the largest message accepted.
    """

    def __init__(self, *, prefix: str, max_message_bytes: int) -> None:
        # A client that never connects: anything that reaches Redis fails at once.
        offline = redis.Redis(unix_socket_path="/nonexistent/turbocast-capture.sock")
        super().__init__(client=offline, prefix=prefix, max_message_bytes=max_message_bytes)
        self.history = _OfflineHistory(offline, prefix=prefix)
        #: Every message, in the order it was sent.
        self.sent: list[Broadcast] = []

    def _publish(
        self,
        channel: str,
        payload: bytes,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        history_key(channel, self.prefix)  # refuses a channel outside the prefix
        self.sent.append(parse_broadcast(channel, payload, exclude, exclude_socket, self.prefix))
        return 0

    def _publish_many(self, publications: list[Publication]) -> list[int]:
        for p in publications:
            self._publish(p.channel, p.payload, p.exclude, p.exclude_socket)
        return [0 for _ in publications]


class _MemoryRefreshWindows(RefreshWindows):
    """Refresh windows in a dict (the subclass :func:`capture_broadcasts` makes holds it):
    the Lua scripts of :class:`RefreshWindows`, in Python."""

    windows: ClassVar[dict[str, list[str]]]

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.prefix = prefix

    def open(self, name: str, request_id: str | None, token: str, ttl: float) -> bool:
        window = self.windows.get(name)
        if window is None:
            self.windows[name] = [token, request_id or ""]
            return True
        if window[1] != (request_id or ""):
            window[1] = ""
        return False

    def close(self, name: str, token: str) -> tuple[bool, str | None]:
        window = self.windows.get(name)
        if window is not None and window[0] != token:
            return False, None
        self.windows.pop(name, None)
        return True, (window[1] or None) if window is not None else None


@dataclass
class EnqueuedTask:
    """A task turbocast enqueued: what ``send_task`` was given (stands in for its result)."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: The delay asked for (a refresh's window), in seconds; :meth:`TaskQueue.perform`
    #: does not wait for it.
    countdown: float | None = None
    id: str = ""


class TaskQueue:
    """Stands in for the app's Celery app for turbocast's tasks: holds what is sent.

    :param app: the Flask app whose context each task runs in.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        #: Tasks sent and not run yet, oldest first.
        self.pending: list[EnqueuedTask] = []
        #: Run each task as soon as it is sent (:meth:`Broadcasts.performing_tasks`).
        self.eager = False
        self._ids = itertools.count(1)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        **options: Any,
    ) -> EnqueuedTask:
        task = EnqueuedTask(
            name, list(args or ()), dict(kwargs or {}), countdown, f"captured-{next(self._ids)}"
        )
        if self.eager:
            self.run(task)
        else:
            self.pending.append(task)
        return task

    def perform(self) -> int:
        """Run the pending tasks, and those they enqueue, in order; returns how many ran."""
        ran = 0
        while self.pending:
            self.run(self.pending.pop(0))
            ran += 1
        return ran

    def run(self, task: EnqueuedTask) -> Any:
        """Run one task as a worker would: in an app context of its own."""
        with self.app.app_context():
            return _task_function(task.name)(*task.args, **task.kwargs)


def _task_function(name: str) -> Callable[..., Any]:
    from . import refreshes, tasks

    if name == tasks.TASK_NAME:
        return tasks._publish_template
    if name == refreshes.TASK_NAME:
        return refreshes._send_refresh
    from . import models  # (needs SQLAlchemy: only for its task)

    if name == models.TASK_NAME:
        return models._broadcast_model
    raise LookupError(f"{name!r} is not a turbocast task")


class Broadcasts:
    """What a test pushed: the messages, and the tasks waiting to push more.

    :param publisher: the capturing publisher.
    :param tasks: the queue of turbocast's tasks.
    """

    def __init__(self, publisher: CapturingPublisher, tasks: TaskQueue) -> None:
        self.publisher = publisher
        self.tasks = tasks

    @property
    def all(self) -> list[Broadcast]:
        """Every captured message, in order."""
        return list(self.publisher.sent)

    def __len__(self) -> int:
        return len(self.publisher.sent)

    def __iter__(self) -> Iterator[Broadcast]:
        return iter(self.all)

    def clear(self) -> None:
        """Forget what was captured so far (the pending tasks stay)."""
        self.publisher.sent.clear()

    def perform_tasks(self) -> int:
        """Run turbocast's pending tasks (``*_later``, model broadcasts, refresh sends), and
        those they enqueue; their pushes are captured. Returns how many ran."""
        return self.tasks.perform()

    @contextmanager
    def performing_tasks(self) -> Iterator[None]:
        """Run turbocast's tasks as they are enqueued, inside the block (and the pending
        ones first). A refresh's send then runs at once, closing its window: every
        ``refresh_stream`` call sends; :meth:`perform_tasks` after the calls shows the
        debouncing."""
        self.perform_tasks()
        self.tasks.eager = True
        try:
            yield
        finally:
            self.tasks.eager = False

    def streams(
        self,
        *,
        session: str | None = None,
        user: str | int | None = None,
        stream: str | None = None,
        everyone: bool = False,
        action: str | None = None,
        target: str | None = None,
        targets: str | None = None,
        contains: str | None = None,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> list[Stream]:
        """The captured ``<turbo-stream>`` elements that match every criterion given.

        :param session: sent to this session id (``to_session``).
        :param user: sent to this user (``to_user``).
        :param stream: sent to this named stream (``to_stream``, a refresh, a model).
        :param everyone: sent to every socket (``to_all``).
        :param action: the element's action.
        :param target: the element's target.
        :param targets: the element's targets selector.
        :param contains: text the element's HTML holds (as sent: escaped).
        :param exclude: the message left out this session id.
        :param exclude_socket: the message left out this socket id.
        """
        wanted = {
            "session": session,
            "user": None if user is None else str(user),
            "stream": stream,
        }
        found = []
        for broadcast in self.publisher.sent:
            if everyone and broadcast.audience != "all":
                continue
            if any(v is not None and (broadcast.audience, broadcast.name) != (k, v)
                   for k, v in wanted.items()):  # fmt: skip
                continue
            if exclude is not None and broadcast.exclude != exclude:
                continue
            if exclude_socket is not None and broadcast.exclude_socket != exclude_socket:
                continue
            found += [
                s
                for s in broadcast.streams
                if (action is None or s.action == action)
                and (target is None or s.target == target)
                and (targets is None or s.targets == targets)
                and (contains is None or contains in s.html)
            ]
        return found

    def assert_broadcast(self, *, count: int | None = None, **criteria: Any) -> list[Stream]:
        """Assert that ``count`` captured elements (or at least one) match; returns them.

        Takes the criteria of :meth:`streams`::

            turbo_broadcasts.assert_broadcast(stream="board:1", action="append",
                                              target="posts", contains="Hello", count=1)

        :param count: how many elements exactly; ``None``: one or more.
        :raises AssertionError: listing what was captured.
        """
        found = self.streams(**criteria)
        if (len(found) != count) if count is not None else not found:
            expected = "at least 1" if count is None else str(count)
            raise AssertionError(self._report(f"expected {expected}", criteria, len(found)))
        return found

    def assert_no_broadcasts(self, **criteria: Any) -> None:
        """Assert that no captured element matches the criteria (of :meth:`streams`);
        with none, that nothing was pushed at all.

        :raises AssertionError: listing what was captured.
        """
        found = self.streams(**criteria)
        if found:
            raise AssertionError(self._report("expected no", criteria, len(found)))

    def _report(self, expected: str, criteria: dict[str, Any], got: int) -> str:
        described = " ".join(f"{k}={v!r}" for k, v in criteria.items() if v not in (None, False))
        lines = [
            f"{expected} turbo stream(s) matching {described or '(anything)'}, got {got}.",
            f"Captured {len(self.publisher.sent)} broadcast(s):",
        ]
        lines += [f"  {i}. {b}" for i, b in enumerate(self.publisher.sent, 1)] or ["  (none)"]
        if self.tasks.pending:
            names = ", ".join(t.name for t in self.tasks.pending)
            lines.append(
                f"{len(self.tasks.pending)} turbocast task(s) not run yet ({names}): "
                "call perform_tasks() to run them"
            )
        return "\n".join(lines)


@contextmanager
def capture_broadcasts(app: Flask) -> Iterator[Broadcasts]:
    """Capture every push of ``app`` in the block, with no Redis and no broker::

        with capture_broadcasts(app) as broadcasts:
            client.post("/tabs/nudge")
        broadcasts.assert_broadcast(session=sid, target="tab-nudges")

    :param app: a Flask app set up with turbocast.
    """
    state = app.extensions.get("turbo")
    if not isinstance(state, TurboState):
        raise TypeError("capture_broadcasts: turbocast is not set up on this app")
    publisher = CapturingPublisher(
        prefix=str(setting(app.config, "TURBO_CHANNEL_PREFIX")),
        max_message_bytes=int(setting(app.config, "TURBO_MAX_MESSAGE_BYTES")),
    )
    queue = TaskQueue(app)
    windows = type("CapturedRefreshWindows", (_MemoryRefreshWindows,), {"windows": {}})
    previous_publisher = state.use_publisher(publisher)
    previous_celery, state.celery = state.celery, cast("Celery", queue)
    previous_windows, Refresher.windows_class = Refresher.windows_class, windows
    try:
        yield Broadcasts(publisher, queue)
    finally:
        Refresher.windows_class = previous_windows
        state.celery = previous_celery
        state.use_publisher(previous_publisher)
