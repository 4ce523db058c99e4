"""Orders to every relay, through Redis: close the sockets of a signed-out session or user.

A :class:`~turbocast.publisher.Publisher` publishes an order on the control
channel (:func:`~turbocast.channels.control_channel`, ``<prefix>:control``) that
every relay's listener subscribes to; each relay closes its matching sockets with
:data:`~turbocast.connection.CLOSE_SIGNED_OUT`. The payload is ASCII:
``disconnect session <session id>`` or ``disconnect user <user id>``.
"""

from __future__ import annotations

from typing import Literal

from .channels import SESSION_ID_RE, USER_ID_RE, user_key, valid_session_id
from .errors import InvalidChannelError

#: Whose sockets an order names.
Kind = Literal["session", "user"]

#: Close code when the socket's session or user was signed out (``disconnect_session``,
#: ``disconnect_user``): the client must not resume with the same identity.
CLOSE_SIGNED_OUT = 4003

_VERB = b"disconnect"


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
