"""turbocast: push Hotwired Turbo Streams from anywhere to browsers, through Redis.

The public API. The demo site and the Celery workers use only what is
exported here, exactly as an application of your own would.

The source lives in this repository's app/turbo/ and is installed as ``turbocast``
(``package-dir`` in pyproject.toml); ``app.turbo`` is not a second name for it.
"""

if __name__ != "turbocast":
    # Two names would load every module twice: two relays, two registries, two sets of classes.
    raise ImportError(
        f"import turbocast, not {__name__}: the core is installed as turbocast "
        "(pip install -e . from the repository root)"
    )

from .channels import (
    broadcast_channel,
    channel_for,
    stream_channel,
    user_channel,
    valid_session_id,
)
from .connection import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
)
from .endpoint import (
    STATUS_BAD_ORIGIN,
    STATUS_BAD_POSITION,
    STATUS_BAD_STREAM,
    STATUS_NO_SESSION,
    STATUS_REDIS_UNAVAILABLE,
    STATUS_TOO_MANY_SOCKETS,
)
from .errors import (
    InvalidChannelError,
    InvalidStreamError,
    MessageTooLargeError,
    PublishError,
    TurboError,
)
from .extension import DEFAULTS, Turbo
from .helpers import session_id, stream_url, turbo_stream_source
from .message import SUBPROTOCOL
from .outbox import CLOSE_OUTBOX_OVERFLOW
from .publisher import Publisher
from .relay import close_all_sockets
from .signing import StreamSigner
from .streams import ACTIONS, MIME_TYPE, TurboStream, render_streams
from .tasks import broadcast_later, send_later

__all__ = [
    "ACTIONS",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_OUTBOX_OVERFLOW",
    "CLOSE_POLICY_VIOLATION",
    "DEFAULTS",
    "MIME_TYPE",
    "STATUS_BAD_ORIGIN",
    "STATUS_BAD_POSITION",
    "STATUS_BAD_STREAM",
    "STATUS_NO_SESSION",
    "STATUS_REDIS_UNAVAILABLE",
    "STATUS_TOO_MANY_SOCKETS",
    "SUBPROTOCOL",
    "StreamSigner",
    "InvalidChannelError",
    "InvalidStreamError",
    "MessageTooLargeError",
    "PublishError",
    "Publisher",
    "Turbo",
    "TurboError",
    "TurboStream",
    "broadcast_channel",
    "broadcast_later",
    "channel_for",
    "close_all_sockets",
    "render_streams",
    "send_later",
    "session_id",
    "stream_channel",
    "stream_url",
    "turbo_stream_source",
    "user_channel",
    "valid_session_id",
]
