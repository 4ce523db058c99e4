"""Request-side helpers: the session id and the stream source element of a page."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from urllib.parse import urlencode, urlsplit

from flask import current_app, g, request, session, url_for
from markupsafe import Markup, escape

from .assets import script_tag
from .channels import valid_session_id, valid_socket_id
from .errors import TurboError
from .settings import setting
from .signing import PRESENCE_SALT, StreamSigner

#: The key of the session id in Flask's (signed) session.
SESSION_KEY = "turbo_sid"
#: The endpoint name of the WebSocket route.
ENDPOINT = "turbo_stream"
#: The endpoint name of the Server-Sent Events route.
SSE_ENDPOINT = "turbo_stream_events"
#: How a page receives its streams; see :func:`turbo_stream_source`.
TRANSPORTS = ("turbo", "websocket", "sse")
#: The query flag of a stream source that listens to its named streams only.
STREAMS_ONLY = ("only", "streams")
#: The request header in which ``<turbocast-stream-source>`` sends its socket's id.
SOCKET_HEADER = "X-Turbocast-Socket"
#: The query parameter in which it sends the id back when it reconnects.
SOCKET_PARAM = "socket"

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


def rotate_session_id() -> str:
    """Give this browser a new session id; returns it. Call it on sign-out and sign-in.

    The old id (take ``session_id()`` before) then names no cookie any more: pass it
    to ``turbo.disconnect_session()``. A page that reloads after its socket was
    closed with 4003 gets a stream source of the new session.
    """
    sid = new_session_id()
    session[SESSION_KEY] = sid
    return sid


def socket_id() -> str | None:
    """Return the id of the socket of the tab that sent this request, or ``None``.

    A page with ``turbo_stream_source(transport="websocket")`` adds its socket's id
    to every request Turbo makes (the ``X-Turbocast-Socket`` header); pass it as
    ``exclude_socket=`` to leave out that tab while the session's other tabs get the
    push. ``None`` when the header is missing or malformed: a request not made by
    Turbo, or a page with another transport (those sockets cannot be told their id).
    The header is the client's word: it can only make a push skip the socket named.
    """
    value = request.headers.get(SOCKET_HEADER)
    return value if valid_socket_id(value) else None


def _forwarded(header: str, trusted: int) -> str | None:
    # Like werkzeug's ProxyFix: with N trusted proxies, the Nth value from the right.
    values = [v.strip() for v in request.headers.get(header, "").split(",") if v.strip()]
    if trusted <= 0 or len(values) < trusted:
        return None
    return values[-trusted]


def _scheme_host() -> tuple[str, str]:
    # The site's own scheme and host, as the browser sees them.
    trusted = int(setting(current_app.config, "TURBO_TRUSTED_PROXIES"))
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
    transport: str | None = None,
    positions: bool = True,
    streams_only: bool = False,
    presence: Iterable[str] = (),
) -> str:
    """Return the absolute URL a page's stream source connects to.

    ``ws://`` or ``wss://`` for the WebSocket transports, ``http(s)://`` for
    Server-Sent Events. The scheme and host come from the request;
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` count only when
    ``TURBO_TRUSTED_PROXIES`` says how many proxies in front of the app set them.

    :param path: the endpoint's path; by default the registered route.
    :param streams: names of streams to listen to; each is signed with the app's secret.
    :param transport: ``"websocket"``, ``"turbo"`` or ``"sse"``; by default ``TURBO_TRANSPORT``.
    :param positions: carry each channel's current history position (``since=``),
        so that what is published between this render and the connect is replayed.
    :param streams_only: listen to the named streams only, not to the session's,
        everyone's and the user's channels (``only=streams``).
    :param presence: names of streams (among ``streams``; added when missing) whose
        presence the page takes part in (see :mod:`turbocast.presence`), signed apart.
    """
    transport = transport or str(setting(current_app.config, "TURBO_TRANSPORT"))
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
    present = list(dict.fromkeys([presence] if isinstance(presence, str) else presence))
    names = [streams] if isinstance(streams, str) else list(streams)
    names += [name for name in present if name not in names]
    query = [STREAMS_ONLY] if streams_only else []
    if names:
        signer = StreamSigner(current_app.secret_key or "")
        query += [("streams", signer.sign(name)) for name in names]
    if present:
        signer = StreamSigner(current_app.secret_key or "", salt=PRESENCE_SALT)
        query += [("presence", signer.sign(name)) for name in present]
    if positions:
        state = current_app.extensions["turbo"]
        channels = state.page_channels(session_id(), names, shared=not streams_only)
        query += [("since", f"{label}~{pos}") for label, pos in state.positions(channels)]
    url = f"{url_scheme}://{host}{path}"
    return f"{url}?{urlencode(query)}" if query else url


def turbo_scripts(turbo: bool = True) -> Markup:
    """Render the script tags of the JavaScript a turbocast page runs, for its ``<head>``.

    ``{{ turbo_scripts() }}``: Turbo itself (the build of ``@hotwired/turbo`` that
    turbocast ships), and, with the ``"websocket"`` transport (``TURBO_TRANSPORT``, the
    default), the reconnecting element. Module scripts, at cache-busting URLs under
    ``TURBO_ASSETS_ROUTE``.

    :param turbo: ``False`` for an app that bundles Turbo itself.
    """
    names = ["turbo.js"] if turbo else []
    if setting(current_app.config, "TURBO_TRANSPORT") == "websocket":
        names.append("turbocast.js")
    return Markup("").join(script_tag(name) for name in names)


#: Where a request keeps the names of the streams its stream sources listen to.
_RENDERED = "turbocast_streams"


def turbo_stream_source(
    path: str | None = None,
    *,
    streams: Iterable[str] = (),
    transport: str | None = None,
    presence: Iterable[str] = (),
    **attributes: str,
) -> Markup:
    """Render the element through which this page receives its streams.

    Use it in a template: ``{{ turbo_stream_source() }}``, or with named streams,
    ``{{ turbo_stream_source(streams=["board:" ~ board.id]) }}``. Rendering it also
    makes sure the session has an id, so the socket's handshake carries one.

    A page may render it more than once, say once in its layout and once for a named
    stream of its own: the first in a request listens to the session, everyone, the
    user and its named streams; each later one only to the named streams that no
    earlier one named (and renders nothing when there are none), so no message
    reaches the page twice.

    Transports (``TURBO_TRANSPORT`` sets the default, ``"websocket"``):

    - ``"websocket"``: ``<turbocast-stream-source>``, a small element (its module
      script comes along) that hands messages to Turbo, reconnects with backoff and
      resumes from the last message it applied.
    - ``"turbo"``: Turbo's own ``<turbo-stream-source>`` on a WebSocket. No script of
      turbocast's; it does not reconnect: after a deploy or a dropped connection the
      page receives nothing until it is loaded again.
    - ``"sse"``: Turbo's own ``<turbo-stream-source>`` on Server-Sent Events, for
      networks that block WebSockets; ``EventSource`` reconnects and resumes by itself.

    :param path: the endpoint's path; by default the registered route.
    :param streams: names of streams this page listens to, signed into the URL.
    :param transport: ``"websocket"``, ``"turbo"`` or ``"sse"``.
    :param presence: names of streams whose presence the page takes part in (listened
        to as well): its signed-in user is a member while the page is open, and the
        page gets the joins and leaves (see :mod:`turbocast.presence`).
    :param attributes: extra attributes (``id``, ``data_*``; ``_`` becomes ``-``).
    """
    session_id()
    transport = transport or str(setting(current_app.config, "TURBO_TRANSPORT"))
    extra = []
    for name, value in attributes.items():
        name = name.replace("_", "-")
        if not _ATTR_RE.fullmatch(name) or name == "src":
            raise TurboError(f"bad attribute for the stream source: {name!r}")
        extra.append(f' {name}="{escape(value)}"')
    present = list(dict.fromkeys([presence] if isinstance(presence, str) else presence))
    names = list(dict.fromkeys([streams] if isinstance(streams, str) else streams))
    names += [name for name in present if name not in names]
    rendered: set[str] | None = g.get(_RENDERED)
    if rendered is not None:
        late = [name for name in present if name in rendered]
        if late:
            raise TurboError(
                f"an earlier turbo_stream_source of this page listens to {late[0]!r} already: "
                "ask for its presence there (presence=[...])"
            )
        names = [name for name in names if name not in rendered]
        if not names:
            return Markup("")
    src = escape(
        stream_url(
            path, names, transport=transport, streams_only=rendered is not None, presence=present
        )
    )
    setattr(g, _RENDERED, (rendered or set()) | set(names))
    attrs = f'src="{src}"{"".join(extra)}'
    if transport == "websocket":
        html = (
            f"{script_tag('turbocast.js')}"
            f"<turbocast-stream-source {attrs}></turbocast-stream-source>"
        )
    else:
        html = f"<turbo-stream-source {attrs}></turbo-stream-source>"
    return Markup(html)  # noqa: S704 - every interpolated value is escaped above
