"""Publishing Turbo Streams to Redis, from any process.

A :class:`Publisher` only writes: it never subscribes and starts no thread, so
a Celery worker, a script or a web view use it alike, with or without a Flask
app. Each message is one Redis round trip: a script appends it to the channel's
history (bounded by count and age) and publishes it with its id and the
publisher's own wall-clock time of the publish: ``<id>;t=<µs> <html>`` on pub/sub
(see :mod:`turbocast.message`), field ``t`` in the history entry.

A publish that loses its connection is retried once. Each publish carries a
random token of its own, stored with its history entry, so a retry whose first
attempt did reach Redis (only the reply was lost) finds it and sends nothing twice;
the retry carries the first attempt's time (``t``), not its own.

A :class:`Batch` (``with publisher.batch() as batch:``) sends many messages in
one round trip: each still gets its own id and history entry, in the order given,
and its own token, so a retried batch sends none of them twice. Its messages carry
one time, taken when the batch is sent.

Any push can leave out one browser session (``exclude=session_id``), or one
socket (``exclude_socket=socket_id``): the originating tab that already rendered
the change. The relay skips that session's sockets, or that socket, live, in a
replay and in a catch-up alike.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import redis
from markupsafe import Markup
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from . import metrics
from .channels import (
    DEFAULT_PREFIX,
    broadcast_channel,
    channel_for,
    control_channel,
    history_key,
    stream_channel,
    user_channel,
    valid_session_id,
    valid_socket_id,
)
from .control import Kind, disconnect_payload
from .errors import InvalidChannelError, MessageTooLargeError, PublishError
from .history import History, Publication
from .settings import DEFAULTS, redis_url, setting
from .streams import render_streams
from .topology import parse, publish

logger = logging.getLogger("turbocast.publisher")

DEFAULT_MAX_MESSAGE_BYTES: int = DEFAULTS["TURBO_MAX_MESSAGE_BYTES"]
DEFAULT_HISTORY_MAXLEN: int = DEFAULTS["TURBO_HISTORY_MAXLEN"]
DEFAULT_HISTORY_SECONDS: float = DEFAULTS["TURBO_HISTORY_SECONDS"]
DEFAULT_TIMEOUT: float = DEFAULTS["TURBO_REDIS_TIMEOUT"]

# A retry looks for its first attempt's entry from this long before that attempt
# began: ids come from Redis's clock, which may be a little behind this host's.
_RETRY_SLACK_MS = 10_000


class Publisher:
    """Sends Turbo Streams to browser sessions or to everyone.

    Example, from a Celery task that was handed a session id::

        publisher = Publisher.from_config(flask_app.config)   # or Publisher(redis_url)
        publisher.to_session(session_id, TurboStream.append("messages", Markup(html)))

    :param redis_url: the Redis server, a Redis Cluster or Sentinels (the forms of
        :mod:`turbocast.topology`); ignored when ``client`` is given.
    :param client: an existing ``redis.Redis`` (or ``redis.cluster.RedisCluster``)
        client to publish with.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :param max_message_bytes: the largest message accepted, in bytes of UTF-8.
    :param history_maxlen: how many messages each channel's history keeps for replay,
        at least, as trimming by count leaves them (see
        :class:`~turbocast.history.History`; ``TURBO_HISTORY_MAXLEN``); every publisher
        of an app must agree on it.
    :param history_seconds: how long a message stays in the history
        (``TURBO_HISTORY_SECONDS``).
    :param timeout: seconds to wait for Redis to accept a connection, and then for each
        reply, before the attempt counts as failed (and is retried once); so a publish to
        an unresponsive Redis raises :class:`PublishError` after about twice this.
        Ignored when ``client`` is given.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        history_maxlen: int = DEFAULT_HISTORY_MAXLEN,
        history_seconds: float = DEFAULT_HISTORY_SECONDS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if client is None:
            if not redis_url:
                raise PublishError("no Redis to publish to: pass redis_url or client")
            if timeout <= 0:
                raise ValueError("the publisher's timeout must be above zero")
            # One retry is ours (see _publish); redis-py's own would stack on top of it.
            topology = parse(redis_url)
            client = topology.client(
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            sharded = topology.sharded
        else:
            sharded = isinstance(client, RedisCluster)
        self.client = client
        self.prefix = prefix
        #: Redis is a Redis Cluster: messages go out on sharded pub/sub (``SPUBLISH``).
        self.sharded = sharded
        self.max_message_bytes = max_message_bytes
        self.history = History(
            client, history_maxlen, history_seconds, prefix=prefix, sharded=sharded
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Publisher:
        """A publisher built from turbocast's settings, as the extension builds its own.

        A worker or a script hands it the web app's config (or a plain dict of the same
        keys), so both publish with the same Redis, prefix, size limit and history::

            publisher = Publisher.from_config(flask_app.config)
            publisher = Publisher.from_config({"REDIS_URL": os.environ["REDIS_URL"]})

        Reads ``TURBO_REDIS_URL`` (else ``REDIS_URL``), ``TURBO_REDIS_TIMEOUT``,
        ``TURBO_CHANNEL_PREFIX``, ``TURBO_MAX_MESSAGE_BYTES``, ``TURBO_HISTORY_MAXLEN`` and
        ``TURBO_HISTORY_SECONDS``; a missing key takes its default from
        :data:`turbocast.DEFAULTS`. Nothing connects until the first publish, but for a Redis
        Cluster, whose client reads the slot map when made.

        :param config: a Flask app's ``config``, or any mapping of settings.
        :raises TurboError: when neither ``TURBO_REDIS_URL`` nor ``REDIS_URL`` is set.
        """
        return cls(
            redis_url(config),
            timeout=float(setting(config, "TURBO_REDIS_TIMEOUT")),
            prefix=str(setting(config, "TURBO_CHANNEL_PREFIX")),
            max_message_bytes=int(setting(config, "TURBO_MAX_MESSAGE_BYTES")),
            history_maxlen=int(setting(config, "TURBO_HISTORY_MAXLEN")),
            history_seconds=float(setting(config, "TURBO_HISTORY_SECONDS")),
        )

    def to_session(
        self,
        session_id: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams to every socket of one browser session.

        :param session_id: the session's id (``session_id()`` in a view).
        :param streams: ``TurboStream`` objects (or ``Markup`` of turbo-stream elements),
            sent together as one message.
        :param exclude: a session id whose sockets must not get it (see :meth:`publish`).
        :param exclude_socket: a socket id that must not get it (see :meth:`publish`).
        :returns: how many web processes received it (0 when nobody listens).
        """
        return self.publish(
            channel_for(session_id, self.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def to_user(
        self,
        user_id: str | int,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams to every socket of every session of one user, on every web process.

        :param user_id: the user's id, as the app's user loader returns it.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it (see :meth:`publish`).
        :param exclude_socket: a socket id that must not get it (see :meth:`publish`).
        :returns: how many web processes received it.
        """
        return self.publish(
            user_channel(user_id, self.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def to_stream(
        self,
        name: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams to every page that listens to a named stream.

        :param name: the stream's name, such as ``"board:42"``; pages ask for it with
            ``turbo_stream_source(streams=["board:42"])``.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it (see :meth:`publish`).
        :param exclude_socket: a socket id that must not get it (see :meth:`publish`).
        :returns: how many web processes received it.
        """
        return self.publish(
            stream_channel(name, self.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def to_all(
        self, *streams: Any, exclude: str | None = None, exclude_socket: str | None = None
    ) -> int:
        """Send streams to every connected socket, everywhere.

        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it (see :meth:`publish`).
        :param exclude_socket: a socket id that must not get it (see :meth:`publish`).
        :returns: how many web processes received it.
        """
        return self.publish(
            broadcast_channel(self.prefix), *streams, exclude=exclude, exclude_socket=exclude_socket
        )

    def disconnect_session(self, session_id: str) -> int:
        """Close every socket of one browser session, in every web process (close 4003).

        For a sign-out: call it once the session's cookie no longer names the old
        identity (see ``rotate_session_id``). Nothing is kept in the history: a web
        process that is away from Redis at that moment does not close its sockets.

        :param session_id: the session's id (``session_id()`` before the sign-out).
        :returns: how many web processes received the order.
        :raises InvalidChannelError: a malformed session id (nothing is sent).
        :raises PublishError: Redis did not accept the order.
        """
        return self._order("session", session_id)

    def disconnect_user(self, user_id: str | int) -> int:
        """Close every socket of one user, in every session and web process (close 4003).

        :param user_id: the user's id, as the app's user loader returns it.
        :returns: how many web processes received the order.
        :raises InvalidChannelError: a user id that cannot name a channel (nothing is sent).
        :raises PublishError: Redis did not accept the order.
        """
        return self._order("user", user_id)

    def _order(self, kind: Kind, ident: object) -> int:
        payload = disconnect_payload(kind, ident)  # raises before anything is sent
        channel = control_channel(self.prefix)
        for attempt in (1, 2):
            try:
                receivers = publish(self.client, self.sharded, channel, payload)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt == 2:
                    raise self._failed(channel, exc, message=False) from exc
                # Idempotent: sent twice, it closes the same sockets.
                logger.warning(
                    "order failed, retrying once",
                    extra={"turbo_channel": channel, "turbo_error": repr(exc)},
                )
            except redis.RedisError as exc:
                raise self._failed(channel, exc, message=False) from exc
            else:
                logger.info("sign-out sent", extra={"turbo_signed_out": kind})
                return receivers
        raise AssertionError("unreachable")  # pragma: no cover

    def publish(
        self,
        channel: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        """Send streams on a channel built by :mod:`turbocast.channels`.

        :param channel: the channel name.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a browser session's id (``session_id()``) whose sockets must not
            get this message, say the tab that made the change and rendered it already.
            It travels with the message, and with its history entry: a replay or a
            catch-up to that session skips it too. ``None``: everyone on the channel.
        :param exclude_socket: one socket's id (``socket_id()`` in a view: the tab whose
            request this is) that must not get this message, while the session's other
            tabs do. It travels like ``exclude``. Only ``<turbocast-stream-source>``
            (``transport="websocket"``) sockets have an id; others are never left out.
        :raises MessageTooLargeError: when the message exceeds ``max_message_bytes``.
        :raises InvalidChannelError: when ``exclude`` is not a session id, or
            ``exclude_socket`` not a socket id.
        :raises PublishError: when Redis refused it, or could not be reached twice.
        :returns: how many web processes received it. When the first attempt's reply was
            lost but the message had landed, the retry does not send it again and returns
            how many are subscribed to the channel now.
        """
        excluded = check_exclude(exclude)
        excluded_socket = check_exclude_socket(exclude_socket)
        payload = self.encode(*streams)
        return self._publish(channel, payload, excluded, excluded_socket)

    def batch(self) -> Batch:
        """Collect messages to send together, in one Redis round trip, when the block ends.

        ::

            with publisher.batch() as batch:
                for sid in session_ids:
                    batch.to_session(sid, TurboStream.update("count", str(n)))
            batch.receivers   # how many web processes got each message, in order

        Each call checks its message at once (size, channel, the exclusions) and raises
        there, so a batch with a bad message sends nothing; an exception that leaves
        the block sends nothing either. See :class:`Batch` for what a failure of Redis
        means.
        """
        return Batch(self)

    def encode(self, *streams: Any) -> bytes:
        """Render streams into the bytes of one message, checking its size.

        :param streams: ``TurboStream`` objects or ``Markup``.
        """
        html: Markup = render_streams(*streams)
        payload = html.encode("utf-8")
        if len(payload) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"message of {len(payload)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes (TURBO_MAX_MESSAGE_BYTES)"
            )
        return payload

    def _publish(
        self,
        channel: str,
        payload: bytes,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> int:
        key = history_key(channel, self.prefix)
        token = os.urandom(16)
        started = time.time()
        started_ms, published_us = int(started * 1000), int(started * 1_000_000)
        try:
            receivers = self.history.publish(
                key,
                channel,
                payload,
                token=token,
                exclude=exclude,
                exclude_socket=exclude_socket,
                published_us=published_us,
            )[1]
            metrics.PUBLISHES.inc()
            return receivers
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # A dropped connection or a Redis restart: one more try on a fresh connection.
            logger.warning(
                "publish failed, retrying once",
                extra={"turbo_channel": channel, "turbo_error": repr(exc)},
            )
        except redis.RedisError as exc:
            raise self._failed(channel, exc) from exc
        try:
            # Only the retry looks for the first attempt's entry: it may have landed.
            receivers = self.history.publish(
                key,
                channel,
                payload,
                token=token,
                retry_from_ms=started_ms - _RETRY_SLACK_MS,
                exclude=exclude,
                exclude_socket=exclude_socket,
                published_us=published_us,  # the same publish: the first attempt's time
            )[1]
        except redis.RedisError as exc:
            raise self._failed(channel, exc) from exc
        metrics.PUBLISHES.inc()
        return receivers

    def _publish_many(self, publications: list[Publication]) -> list[int]:
        started = time.time()
        started_ms, published_us = int(started * 1000), int(started * 1_000_000)
        try:
            sent = self.history.publish_many(publications, published_us=published_us)
            metrics.PUBLISHES.inc(len(publications))
            return [n for _, n in sent]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning(
                "batch publish failed, retrying once",
                extra={"turbo_messages": len(publications), "turbo_error": repr(exc)},
            )
        except redis.RedisError as exc:
            raise self._batch_failed(publications, exc) from exc
        try:
            # Redis ran a prefix of the batch, perhaps all of it: the retry finds those
            # by their tokens and sends only the rest, still in order.
            retried = self.history.publish_many(
                publications,
                retry_from_ms=started_ms - _RETRY_SLACK_MS,
                published_us=published_us,
            )
        except redis.RedisError as exc:
            raise self._batch_failed(publications, exc) from exc
        metrics.PUBLISHES.inc(len(publications))
        return [n for _, n in retried]

    @staticmethod
    def _batch_failed(publications: list[Publication], exc: redis.RedisError) -> PublishError:
        metrics.PUBLISH_ERRORS.inc(len(publications))
        logger.error(
            "batch publish failed",
            extra={"turbo_messages": len(publications), "turbo_error": repr(exc)},
        )
        return PublishError(
            f"Redis did not accept a batch of {len(publications)} messages: {exc} "
            "(the messages before the one it refused were sent)"
            if isinstance(exc, redis.ResponseError)
            else f"Redis did not accept a batch of {len(publications)} messages: {exc}"
        )

    @staticmethod
    def _failed(channel: str, exc: redis.RedisError, *, message: bool = True) -> PublishError:
        if message:  # (not a sign-out order)
            metrics.PUBLISH_ERRORS.inc()
        logger.error("publish failed", extra={"turbo_channel": channel, "turbo_error": repr(exc)})
        return PublishError(f"Redis did not accept the message for {channel}: {exc}")

    def close(self) -> None:
        """Close the publisher's Redis connections."""
        self.history.close()
        self.client.close()


def check_exclude(exclude: object) -> str | None:
    """``exclude`` if it is a session id (or ``None``), else :class:`InvalidChannelError`.

    :param exclude: what a caller passed as ``exclude=``.
    """
    if exclude is None or valid_session_id(exclude):
        return exclude  # type: ignore[return-value]
    raise InvalidChannelError(
        f"exclude={exclude!r} is not a session id (16-128 characters of A-Z a-z 0-9 _ -): "
        "pass session_id() of the browser session to leave out"
    )


def check_exclude_socket(exclude_socket: object) -> str | None:
    """``exclude_socket`` if it is a socket id (or ``None``), else :class:`InvalidChannelError`.

    :param exclude_socket: what a caller passed as ``exclude_socket=``.
    """
    if exclude_socket is None or valid_socket_id(exclude_socket):
        return exclude_socket  # type: ignore[return-value]
    raise InvalidChannelError(
        f"exclude_socket={exclude_socket!r} is not a socket id (16-64 characters of "
        "A-Z a-z 0-9 _ -): pass socket_id() of the request, which is None without one"
    )


class Batch:
    """Messages to send together, in order, in one Redis round trip: :meth:`Publisher.batch`.

    The calls mirror the publisher's (:meth:`to_session`, :meth:`to_user`,
    :meth:`to_stream`, :meth:`to_all`, :meth:`publish`, each with ``exclude=`` and
    ``exclude_socket=``) and
    check their message at once, raising there; nothing is sent until :meth:`send`,
    which the ``with`` block calls when it ends without an exception.

    Each message gets its own history id and entry, in the order added, and its own
    token: the script of a single publish, run once per message and pipelined
    (without a transaction, so another publisher's messages may fall between them,
    and a socket may get a batch's first messages before Redis ran its last ones).

    When Redis fails: if the connection breaks or times out, Redis ran the messages
    before some point (perhaps all, perhaps none); the batch is retried once on a
    fresh connection, and the retry finds each message that landed by its token and
    sends only the rest, in order, so no message is delivered twice and none is lost.
    Should the retry fail too, :class:`PublishError` is raised and the messages the
    two attempts got through stay sent. If Redis refuses one message (a
    ``ResponseError``, say a key of the wrong type), the others are sent and
    :class:`PublishError` is raised after; there is no retry.

    :param publisher: the publisher whose Redis and settings it uses.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._publications: list[Publication] = []
        #: How many web processes got each message, in order, once sent.
        self.receivers: list[int] | None = None

    def __len__(self) -> int:
        return len(self._publications)

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.send()

    def publish(
        self,
        channel: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> None:
        """Add a message on a channel built by :mod:`turbocast.channels`.

        :param channel: the channel name.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id that must not get it.
        :raises MessageTooLargeError: the message exceeds the size limit.
        :raises InvalidChannelError: a channel outside the prefix, or a bad ``exclude`` or
            ``exclude_socket``.
        """
        if self.receivers is not None:
            raise PublishError("this batch was sent already: start another one")
        publisher = self._publisher
        excluded = check_exclude(exclude)
        excluded_socket = check_exclude_socket(exclude_socket)
        key = history_key(channel, publisher.prefix)
        payload = publisher.encode(*streams)
        token = os.urandom(16)
        self._publications.append(
            Publication(key, channel, payload, token, excluded, excluded_socket)
        )

    def to_session(
        self,
        session_id: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> None:
        """Add a message for one browser session (see :meth:`Publisher.to_session`).

        :param session_id: the session's id.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id that must not get it.
        """
        self.publish(
            channel_for(session_id, self._publisher.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def to_user(
        self,
        user_id: str | int,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> None:
        """Add a message for every socket of one user (see :meth:`Publisher.to_user`).

        :param user_id: the user's id.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id that must not get it.
        """
        self.publish(
            user_channel(user_id, self._publisher.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def to_stream(
        self,
        name: str,
        *streams: Any,
        exclude: str | None = None,
        exclude_socket: str | None = None,
    ) -> None:
        """Add a message for every page of a named stream (see :meth:`Publisher.to_stream`).

        :param name: the stream's name.
        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id that must not get it.
        """
        self.publish(
            stream_channel(name, self._publisher.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def to_all(
        self, *streams: Any, exclude: str | None = None, exclude_socket: str | None = None
    ) -> None:
        """Add a message for every socket (see :meth:`Publisher.to_all`).

        :param streams: ``TurboStream`` objects, sent together as one message.
        :param exclude: a session id whose sockets must not get it.
        :param exclude_socket: a socket id that must not get it.
        """
        self.publish(
            broadcast_channel(self._publisher.prefix),
            *streams,
            exclude=exclude,
            exclude_socket=exclude_socket,
        )

    def send(self) -> list[int]:
        """Send every message added, in one round trip (an empty batch sends nothing).

        :raises PublishError: see the class's description.
        :returns: how many web processes got each message, in order.
        """
        if self.receivers is not None:
            raise PublishError("this batch was sent already: start another one")
        publications, self._publications = self._publications, []
        self.receivers = self._publisher._publish_many(publications) if publications else []
        return self.receivers
