"""Orders to every relay, through Redis: close the sockets of a signed-out session or user.

A :class:`~turbocast.publisher.Publisher` publishes an order on the control
channel (:func:`~turbocast.channels.control_channel`, ``<prefix>:control``) that
every relay's listener subscribes to; each relay closes its matching sockets with
:data:`~turbocast.connection.CLOSE_SIGNED_OUT`. The payload is ASCII:
``disconnect session <session id>`` or ``disconnect user <user id>``.

One more order asks rather than closes: ``report <reply channel>`` (see
:func:`report_payload`); each relay publishes a JSON summary of its sockets on the
reply channel (:meth:`~turbocast.relay.Relay.report`). ``flask turbo sockets``
sends it.
"""

from __future__ import annotations

import re
from typing import Literal

from .channels import SESSION_ID_RE, USER_ID_RE, user_key, valid_session_id
from .errors import InvalidChannelError

#: Whose sockets an order names.
Kind = Literal["session", "user"]

#: Close code when the socket's session or user was signed out (``disconnect_session``,
#: ``disconnect_user``): the client must not resume with the same identity.
CLOSE_SIGNED_OUT = 4003

_VERB = b"disconnect"
_REPORT = b"report"
_REPLY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def disconnect_payload(kind: Kind, ident: object) -> bytes:
    """The order to close every socket of one session or one user.

    :param kind: ``"session"`` or ``"user"``.
    :param ident: the session id, or the user id (``str`` or ``int``).
    :raises InvalidChannelError: a malformed id.
    """
    if kind == "session":
        if not valid_session_id(ident):
            raise InvalidChannelError(
                f"{ident!r} is not a session id (16-128 characters of A-Z a-z 0-9 _ -)"
            )
        key = str(ident)
    elif kind == "user":
        key = user_key(ident)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return b" ".join((_VERB, kind.encode(), key.encode()))


def parse_order(payload: bytes) -> tuple[Kind, bytes] | None:
    """``(kind, id)`` of a control payload, or ``None`` when it is not a valid order.

    :param payload: what came on the control channel.
    """
    parts = payload.split(b" ")
    if len(parts) != 3 or parts[0] != _VERB:
        return None
    kind, ident = parts[1], parts[2]
    text = ident.decode("ascii", "replace")
    if kind == b"session" and SESSION_ID_RE.fullmatch(text):
        return "session", ident
    if kind == b"user" and USER_ID_RE.fullmatch(text):
        return "user", ident
    return None


def report_payload(reply_channel: str) -> bytes:
    """The order asking every relay to publish a summary of its sockets on ``reply_channel``.

    :param reply_channel: where the replies go (the asker subscribes to it first).
    :raises ValueError: a channel name outside ``A-Z a-z 0-9 _ . : -``.
    """
    if not _REPLY_RE.fullmatch(reply_channel):
        raise ValueError(f"{reply_channel!r} is not a reply channel")
    return b" ".join((_REPORT, reply_channel.encode()))


def parse_report(payload: bytes) -> bytes | None:
    """The reply channel of a ``report`` order, or ``None`` when it is not one.

    :param payload: what came on the control channel.
    """
    parts = payload.split(b" ")
    if len(parts) != 2 or parts[0] != _REPORT:
        return None
    if not _REPLY_RE.fullmatch(parts[1].decode("ascii", "replace")):
        return None
    return parts[1]
