"""Redis channel names: who a message is addressed to.

Every channel turbocast uses is built here and nowhere else, so the naming
scheme (``<prefix>:session:<id>``, ``<prefix>:broadcast``) stays in one place
and the prefix keeps them clear of Celery's own keys in the same Redis.
"""

from __future__ import annotations

import re

from .errors import InvalidChannelError

DEFAULT_PREFIX = "turbo"

#: Session ids are what :func:`new_session_id` makes: URL-safe base64, 16 to 128 characters.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


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


def channel_for(session_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the channel of one browser session.

    :param session_id: the session's id, as :func:`app.turbo.session_id` returns it.
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
