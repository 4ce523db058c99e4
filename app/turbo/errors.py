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
