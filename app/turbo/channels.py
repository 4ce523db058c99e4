"""Redis channel names: who a message is addressed to.

Every channel turbocast uses is built here and nowhere else, so the naming
scheme (``<prefix>:session:<id>``, ``<prefix>:broadcast``) stays in one place
and the prefix keeps them clear of Celery's own keys in the same Redis.
"""

from __future__ import annotations

import re
import secrets

from .errors import InvalidChannelError
from .settings import DEFAULTS

DEFAULT_PREFIX: str = DEFAULTS["TURBO_CHANNEL_PREFIX"]

#: Session ids are what :func:`new_session_id` makes: URL-safe base64, 16 to 128 characters.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
#: Socket ids are what :func:`new_socket_id` makes: URL-safe base64, 16 to 64 characters.
SOCKET_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
#: User ids: what a user loader returns (ints become their decimal text).
USER_ID_RE = re.compile(r"[A-Za-z0-9_.@+=-]{1,128}")
#: Named streams: topics such as ``board:42`` or ``org/7/inbox``.
STREAM_NAME_RE = re.compile(r"[A-Za-z0-9_.:@/=+-]{1,200}")


def _check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.fullmatch(prefix):
        raise InvalidChannelError(
            f"channel prefix {prefix!r} must be 1-32 characters of A-Z a-z 0-9 _ . -"
        )
    return prefix


def valid_session_id(session_id: object) -> bool:
    """Tell whether ``session_id`` has the shape of a turbocast session id.

    :param session_id: the value to check (anything; only a matching ``str`` passes).
    """
    return isinstance(session_id, str) and SESSION_ID_RE.fullmatch(session_id) is not None


def new_socket_id() -> str:
    """Make a random, unguessable id for one socket (96 bits, URL-safe, 16 characters)."""
    return secrets.token_urlsafe(12)


def valid_socket_id(socket_id: object) -> bool:
    """Tell whether ``socket_id`` has the shape of a turbocast socket id.

    :param socket_id: the value to check (anything; only a matching ``str`` passes).
    """
    return isinstance(socket_id, str) and SOCKET_ID_RE.fullmatch(socket_id) is not None


def channel_for(session_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the channel of one browser session.

    :param session_id: the session's id, as :func:`turbocast.session_id` returns it.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :raises InvalidChannelError: when the id is not a well-formed session id.
    """
    if not valid_session_id(session_id):
        raise InvalidChannelError(
            f"{session_id!r} is not a session id (16-128 characters of A-Z a-z 0-9 _ -)"
        )
    return f"{_check_prefix(prefix)}:session:{session_id}"


def broadcast_channel(prefix: str = DEFAULT_PREFIX) -> str:
    """Return the channel every socket listens to.

    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    """
    return f"{_check_prefix(prefix)}:broadcast"


def user_key(user_id: object) -> str:
    """Return a user id as its channel key, or raise :class:`InvalidChannelError`.

    :param user_id: a ``str`` or ``int`` id, as the app's user loader returns it.
    """
    if isinstance(user_id, bool) or not isinstance(user_id, str | int):
        raise InvalidChannelError(f"a user id is a str or an int, not {type(user_id).__name__}")
    key = str(user_id)
    if not USER_ID_RE.fullmatch(key):
        raise InvalidChannelError(
            f"{key!r} is not a usable user id (1-128 characters of A-Z a-z 0-9 _ . @ + = -)"
        )
    return key


def user_channel(user_id: str | int, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the channel of one user: every socket of every session of theirs.

    :param user_id: the user's id (what the app's user loader returns).
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :raises InvalidChannelError: when the id has characters outside the allowed set.
    """
    return f"{_check_prefix(prefix)}:user:{user_key(user_id)}"


def control_channel(prefix: str = DEFAULT_PREFIX) -> str:
    """Return the channel every relay listens to for orders (``disconnect_session``...).

    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    """
    return f"{_check_prefix(prefix)}:control"


def check_stream_name(name: object) -> str:
    """Return ``name`` if it can name a stream, or raise :class:`InvalidChannelError`.

    :param name: the stream's name, such as ``"board:42"``.
    """
    if not isinstance(name, str) or not STREAM_NAME_RE.fullmatch(name):
        raise InvalidChannelError(
            f"{name!r} is not a stream name (1-200 characters of A-Z a-z 0-9 _ . : @ / = + -)"
        )
    return name


def stream_channel(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the channel of a named stream (a topic that signed-in pages listen to).

    :param name: the stream's name, such as ``"board:42"``.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :raises InvalidChannelError: when the name has characters outside the allowed set.
    """
    return f"{_check_prefix(prefix)}:stream:{check_stream_name(name)}"


def refresh_key(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the Redis key of a named stream's open refresh window (:mod:`turbocast.refreshes`).

    :param name: the stream's name, such as ``"board:42"``.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :raises InvalidChannelError: when the name has characters outside the allowed set.
    """
    return f"{_check_prefix(prefix)}:refresh:{check_stream_name(name)}"


def _rest(channel: str, prefix: str) -> str:
    head = f"{_check_prefix(prefix)}:"
    if not channel.startswith(head):
        raise InvalidChannelError(f"{channel!r} is not a channel under the prefix {prefix!r}")
    return channel[len(head) :]


def history_key(channel: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the Redis key of a channel's history (a Redis Stream).

    The channel's name is the key's hash tag (``turbo:history:{turbo:session:<id>}``): in
    a Redis Cluster the key lives in the channel's own hash slot, on the shard that
    carries the channel's sharded pub/sub, so appending and publishing stay one script.
    (Channel names never hold braces.)

    :param channel: the channel, from one of the ``*_channel`` functions.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    """
    _rest(channel, prefix)
    return f"{prefix}:history:{{{channel}}}"


def clock_key(prefix: str = DEFAULT_PREFIX) -> str:
    """Return the Redis key of the publish clock: the last history id handed out.

    One per prefix, shared by every channel, so that ids order publishes across channels.
    A Redis Cluster has none (a script touches one hash slot): there each channel's
    history orders its own ids (see :mod:`turbocast.history`).

    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    """
    return f"{_check_prefix(prefix)}:clock"


def label_for(channel: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the short name clients use for a channel: ``s``, ``b``, ``u`` or ``t:<stream>``.

    A socket listens to one session, one user and any number of streams, so the
    label says which without repeating ids in every frame and URL.

    :param channel: the channel.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    """
    kind, _, rest = _rest(channel, prefix).partition(":")
    if kind == "session":
        return "s"
    if kind == "broadcast":
        return "b"
    if kind == "user":
        return "u"
    if kind == "stream":
        return f"t:{rest}"
    raise InvalidChannelError(f"{channel!r} is not a turbocast channel")
