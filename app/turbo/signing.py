"""Signed stream names: a page may listen to a named stream only if the server said so.

The template helper signs each name with the app's secret (itsdangerous); the
WebSocket endpoint subscribes a socket only to names whose signature it can
verify. A client can neither invent a name nor move a signature to another one.
"""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

from .channels import check_stream_name
from .errors import InvalidChannelError

SALT = "turbocast.stream-name"
#: Presence requests are signed apart: a stream's token does not ask for its presence.
PRESENCE_SALT = "turbocast.presence"


class StreamSigner:
    """Signs and verifies stream names.

    :param secret_key: the app's ``SECRET_KEY``.
    :param salt: what the tokens are for (:data:`SALT`: listening; :data:`PRESENCE_SALT`:
        taking part in a stream's presence); a token of one salt is invalid for another.
    """

    def __init__(self, secret_key: str | bytes, salt: str = SALT) -> None:
        if not secret_key:
            raise InvalidChannelError("signing stream names needs a SECRET_KEY")
        self._serializer = URLSafeSerializer(secret_key, salt=salt)

    def sign(self, name: str) -> str:
        """Return a URL-safe token that carries ``name`` and its signature.

        :param name: the stream's name, such as ``"board:42"``.
        """
        return str(self._serializer.dumps(check_stream_name(name)))

    def unsign(self, token: str) -> str:
        """Return the stream name a token carries.

        :param token: what :meth:`sign` returned.
        :raises InvalidChannelError: when the signature or the name is not valid.
        """
        try:
            name = self._serializer.loads(token)
        except BadSignature as exc:
            raise InvalidChannelError("invalid stream signature") from exc
        return check_stream_name(name)
