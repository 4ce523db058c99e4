"""turbocast: push Hotwired Turbo Streams from anywhere to browsers, through Redis.

The public API. The demo site and the Celery workers use only what is
exported here, exactly as an application of your own would.

Each name is imported from its module on first use: importing one module of the
package imports nothing else of it. gunicorn's master imports
``turbocast.gunicorn_hooks`` (``-c python:turbocast.gunicorn_hooks``) before a
gevent worker patches; had this file imported everything, redis and ssl would
already be loaded by then ("Monkey-patching ssl after ssl has already been
imported").

The source lives in this repository's app/turbo/ and is installed as ``turbocast``
(``package-dir`` in pyproject.toml); ``app.turbo`` is not a second name for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if __name__ != "turbocast":
    # Two names would load every module twice: two relays, two registries, two sets of classes.
    raise ImportError(
        f"import turbocast, not {__name__}: the core is installed as turbocast "
        "(pip install -e . from the repository root)"
    )

if TYPE_CHECKING:
    from .channels import (
        broadcast_channel,
        channel_for,
        stream_channel,
        user_channel,
        valid_session_id,
        valid_socket_id,
    )
    from .connection import (
        CLOSE_GOING_AWAY,
        CLOSE_INTERNAL_ERROR,
        CLOSE_MESSAGE_TOO_BIG,
        CLOSE_POLICY_VIOLATION,
        CLOSE_SIGNED_OUT,
    )
    from .endpoint import (
        STATUS_BAD_ORIGIN,
        STATUS_BAD_POSITION,
        STATUS_BAD_STREAM,
        STATUS_NO_SESSION,
        STATUS_REDIS_UNAVAILABLE,
        STATUS_SERVER_CANNOT_HOLD,
        STATUS_SIGNED_OUT,
        STATUS_TOO_MANY_SOCKETS,
    )
    from .errors import (
        CeleryNotConfiguredError,
        InvalidChannelError,
        InvalidStreamError,
        MessageTooLargeError,
        PublishError,
        TurboError,
    )
    from .extension import Turbo
    from .health import Health, health_view
    from .helpers import (
        rotate_session_id,
        session_id,
        socket_id,
        stream_url,
        turbo_scripts,
        turbo_stream_source,
    )
    from .message import SUBPROTOCOL
    from .metrics import metrics_view
    from .models import broadcasts, broadcasts_refreshes, dom_id, suppressing_broadcasts
    from .outbox import CLOSE_OUTBOX_OVERFLOW
    from .presence import Presence, member_dom_id, presence_target
    from .publisher import Batch, Publisher
    from .refreshes import Refresher, refresh_stream
    from .relay import close_all_sockets
    from .rendering import render_stream
    from .settings import DEFAULTS
    from .signing import StreamSigner
    from .streams import ACTIONS, MIME_TYPE, TurboStream, render_streams
    from .tasks import broadcast_later, send_later

#: Each public name's module, as above.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "channels": (
        "broadcast_channel",
        "channel_for",
        "stream_channel",
        "user_channel",
        "valid_session_id",
        "valid_socket_id",
    ),
    "connection": (
        "CLOSE_GOING_AWAY",
        "CLOSE_INTERNAL_ERROR",
        "CLOSE_MESSAGE_TOO_BIG",
        "CLOSE_POLICY_VIOLATION",
        "CLOSE_SIGNED_OUT",
    ),
    "endpoint": (
        "STATUS_BAD_ORIGIN",
        "STATUS_BAD_POSITION",
        "STATUS_BAD_STREAM",
        "STATUS_NO_SESSION",
        "STATUS_REDIS_UNAVAILABLE",
        "STATUS_SERVER_CANNOT_HOLD",
        "STATUS_SIGNED_OUT",
        "STATUS_TOO_MANY_SOCKETS",
    ),
    "errors": (
        "CeleryNotConfiguredError",
        "InvalidChannelError",
        "InvalidStreamError",
        "MessageTooLargeError",
        "PublishError",
        "TurboError",
    ),
    "extension": ("Turbo",),
    "health": ("Health", "health_view"),
    "helpers": (
        "rotate_session_id",
        "session_id",
        "socket_id",
        "stream_url",
        "turbo_scripts",
        "turbo_stream_source",
    ),
    "message": ("SUBPROTOCOL",),
    "metrics": ("metrics_view",),
    "presence": ("Presence", "member_dom_id", "presence_target"),
    # Model broadcasts need SQLAlchemy (turbocast[sqlalchemy]): imported only when used.
    "models": ("broadcasts", "broadcasts_refreshes", "dom_id", "suppressing_broadcasts"),
    "outbox": ("CLOSE_OUTBOX_OVERFLOW",),
    "publisher": ("Batch", "Publisher"),
    "refreshes": ("Refresher", "refresh_stream"),
    "relay": ("close_all_sockets",),
    "rendering": ("render_stream",),
    "settings": ("DEFAULTS",),
    "signing": ("StreamSigner",),
    "streams": ("ACTIONS", "MIME_TYPE", "TurboStream", "render_streams"),
    "tasks": ("broadcast_later", "send_later"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ACTIONS",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_OUTBOX_OVERFLOW",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SIGNED_OUT",
    "DEFAULTS",
    "MIME_TYPE",
    "STATUS_BAD_ORIGIN",
    "STATUS_BAD_POSITION",
    "STATUS_BAD_STREAM",
    "STATUS_NO_SESSION",
    "STATUS_REDIS_UNAVAILABLE",
    "STATUS_SERVER_CANNOT_HOLD",
    "STATUS_SIGNED_OUT",
    "STATUS_TOO_MANY_SOCKETS",
    "SUBPROTOCOL",
    "StreamSigner",
    "Batch",
    "CeleryNotConfiguredError",
    "Health",
    "InvalidChannelError",
    "InvalidStreamError",
    "MessageTooLargeError",
    "Presence",
    "PublishError",
    "Publisher",
    "Refresher",
    "Turbo",
    "TurboError",
    "TurboStream",
    "broadcast_channel",
    "broadcast_later",
    "broadcasts",
    "broadcasts_refreshes",
    "channel_for",
    "close_all_sockets",
    "dom_id",
    "health_view",
    "member_dom_id",
    "metrics_view",
    "presence_target",
    "refresh_stream",
    "render_stream",
    "render_streams",
    "send_later",
    "rotate_session_id",
    "session_id",
    "socket_id",
    "stream_channel",
    "stream_url",
    "suppressing_broadcasts",
    "turbo_scripts",
    "turbo_stream_source",
    "user_channel",
    "valid_session_id",
    "valid_socket_id",
]


def _export(name: str) -> Any:
    """Import a public name from its module on first use, and keep it here."""
    try:
        module = _MODULE_OF[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if not TYPE_CHECKING:
    # Type checkers read the imports above instead, and so still flag a misspelt name.
    __getattr__ = _export
