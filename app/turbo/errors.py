"""The turbocast exception tree: every error the library raises is a TurboError."""

from __future__ import annotations


class TurboError(Exception):
    """Base class of every turbocast error."""


class InvalidStreamError(TurboError, ValueError):
    """A Turbo Stream cannot be built as asked (unknown action, missing target, bad attribute)."""


class InvalidChannelError(TurboError, ValueError):
    """A session id, user id or stream name cannot address a channel."""


class PublishError(TurboError):
    """Redis did not accept a message, even after one retry."""


class MessageTooLargeError(PublishError, ValueError):
    """A message is larger than the configured ``TURBO_MAX_MESSAGE_BYTES``."""


class CeleryNotConfiguredError(TurboError):
    """A ``*_later`` call on an app that names no Celery app to enqueue on.

    turbocast never falls back to Celery's default app: that would send to
    ``amqp://guest@localhost//`` while the view answers 200.
    """


class HandshakeError(TurboError):
    """A WebSocket upgrade request that cannot be accepted as it is: answer it with HTTP.

    :param message: what is wrong, for the log and the response body.
    :param status: the HTTP status to answer with.
    :param headers: headers the answer must carry (``Sec-WebSocket-Version`` for a
        version the server does not speak, RFC 6455 §4.4).
    """

    def __init__(
        self, message: str, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers: dict[str, str] = headers or {}
