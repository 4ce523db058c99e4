"""Request-side helpers: the session id and the stream source element of a page."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from urllib.parse import urlencode, urlsplit

from flask import current_app, request, session, url_for
from markupsafe import Markup, escape

from .channels import valid_session_id
from .errors import TurboError
from .signing import StreamSigner

#: The key of the session id in Flask's (signed) session.
SESSION_KEY = "turbo_sid"
#: The endpoint name of the WebSocket route.
ENDPOINT = "turbo_stream"
#: The endpoint name of the Server-Sent Events route.
SSE_ENDPOINT = "turbo_stream_events"
#: The endpoint name of the reconnecting element's script.
SCRIPT_ENDPOINT = "turbo_script"
#: How a page receives its streams; see :func:`turbo_stream_source`.
TRANSPORTS = ("turbo", "websocket", "sse")

_HOST_RE = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_ATTR_RE = re.compile(r"[a-zA-Z_:][-a-zA-Z0-9_:.]*")


def new_session_id() -> str:
    """Make a random, unguessable session id (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def session_id() -> str:
    """Return the current browser session's id, creating it on first use.

    The id lives in Flask's signed session cookie, so only this server can set
    it and the WebSocket handshake can trust it.
    """
    sid = session.get(SESSION_KEY)
    if not valid_session_id(sid):
        sid = new_session_id()
        session[SESSION_KEY] = sid
    assert isinstance(sid, str)
    return sid


def _forwarded(header: str, trusted: int) -> str | None:
    # Like werkzeug's ProxyFix: with N trusted proxies, the Nth value from the right.
    values = [v.strip() for v in request.headers.get(header, "").split(",") if v.strip()]
    if trusted <= 0 or len(values) < trusted:
        return None
    return values[-trusted]


def _scheme_host() -> tuple[str, str]:
    # The site's own scheme and host, as the browser sees them.
    trusted = int(current_app.config.get("TURBO_TRUSTED_PROXIES", 0))
    scheme = (_forwarded("X-Forwarded-Proto", trusted) or request.scheme).lower()
    host = _forwarded("X-Forwarded-Host", trusted) or request.host
    if not _HOST_RE.fullmatch(host):
        raise TurboError(f"refusing to use the host {host!r}")
    return scheme, host.lower()


def _origin(scheme: str, host: str) -> str:
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    default_port = {"http": ":80", "https": ":443"}.get(scheme)
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    return f"{scheme}://{host}"


def site_origin() -> str:
    """The origin (``scheme://host[:port]``) this request was made to, as the browser sees it."""
    return _origin(*_scheme_host())


def normalize_origin(origin: str) -> str:
    """Lower-case an ``Origin`` header value and drop a default port, for comparison.

    :param origin: the header's value, such as ``https://example.com:443``.
    """
    scheme, sep, host = origin.strip().lower().partition("://")
    return _origin(scheme, host.rstrip("/")) if sep else origin.strip().lower()


def stream_url(
    path: str | None = None,
    streams: Iterable[str] = (),
    *,
    transport: str = "turbo",
    positions: bool = True,
) -> str:
    """Return the absolute URL a page's stream source connects to.

    ``ws://`` or ``wss://`` for the WebSocket transports, ``http(s)://`` for
    Server-Sent Events. The scheme and host come from the request;
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` count only when
    ``TURBO_TRUSTED_PROXIES`` says how many proxies in front of the app set them.

    :param path: the endpoint's path; by default the registered route.
    :param streams: names of streams to listen to; each is signed with the app's secret.
    :param transport: ``"turbo"``, ``"websocket"`` or ``"sse"``.
    :param positions: carry each channel's current history position (``since=``),
        so that what is published between this render and the connect is replayed.
    """
    if transport not in TRANSPORTS:
        raise TurboError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
    scheme, host = _scheme_host()
    secure = scheme in ("https", "wss")
    endpoint = SSE_ENDPOINT if transport == "sse" else ENDPOINT
    if path is None:
        # Werkzeug builds websocket rules as ws:// URLs from the raw request; keep the path.
        path = urlsplit(url_for(endpoint)).path
    elif not path.startswith("/"):
        raise TurboError(f"the stream path must start with '/', not {path!r}")
    else:
        path = request.script_root + path
    if transport == "sse":
        url_scheme = "https" if secure else "http"
    else:
        url_scheme = "wss" if secure else "ws"
    names = [streams] if isinstance(streams, str) else list(streams)
    query = []
    if names:
        signer = StreamSigner(current_app.secret_key or "")
        query += [("streams", signer.sign(name)) for name in names]
    if positions:
        state = current_app.extensions["turbo"]
        channels = state.page_channels(session_id(), names)
        query += [("since", f"{label}~{pos}") for label, pos in state.positions(channels)]
    url = f"{url_scheme}://{host}{path}"
    return f"{url}?{urlencode(query)}" if query else url


def turbo_stream_source(
    path: str | None = None,
    *,
    streams: Iterable[str] = (),
    transport: str | None = None,
    **attributes: str,
) -> Markup:
    """Render the element through which this page receives its streams.

    Use it in a template: ``{{ turbo_stream_source() }}``, or with named streams,
    ``{{ turbo_stream_source(streams=["board:" ~ board.id]) }}``. Rendering it also
    makes sure the session has an id, so the socket's handshake carries one.

    Transports (``TURBO_TRANSPORT`` sets the default):

    - ``"turbo"``: Turbo's own ``<turbo-stream-source>`` on a WebSocket. No custom
      JavaScript; it does not reconnect.
    - ``"websocket"``: ``<turbocast-stream-source>``, a small element served at
      ``TURBO_SCRIPT_ROUTE`` that hands messages to Turbo, reconnects with backoff
      and resumes from the last message it applied.
    - ``"sse"``: Turbo's own ``<turbo-stream-source>`` on Server-Sent Events, for
      networks that block WebSockets; ``EventSource`` reconnects and resumes by itself.

    :param path: the endpoint's path; by default the registered route.
    :param streams: names of streams this page listens to, signed into the URL.
    :param transport: ``"turbo"``, ``"websocket"`` or ``"sse"``.
    :param attributes: extra attributes (``id``, ``data_*``; ``_`` becomes ``-``).
    """
    session_id()
    transport = transport or str(current_app.config.get("TURBO_TRANSPORT", "turbo"))
    extra = []
    for name, value in attributes.items():
        name = name.replace("_", "-")
        if not _ATTR_RE.fullmatch(name) or name == "src":
            raise TurboError(f"bad attribute for the stream source: {name!r}")
        extra.append(f' {name}="{escape(value)}"')
    src = escape(stream_url(path, streams, transport=transport))
    attrs = f'src="{src}"{"".join(extra)}'
    if transport == "websocket":
        script = escape(url_for(SCRIPT_ENDPOINT))
        html = (
            f'<script type="module" src="{script}"></script>'
            f"<turbocast-stream-source {attrs}></turbocast-stream-source>"
        )
    else:
        html = f"<turbo-stream-source {attrs}></turbo-stream-source>"
    return Markup(html)  # noqa: S704 - every interpolated value is escaped above
