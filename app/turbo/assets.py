"""The JavaScript turbocast serves: Turbo itself, and the reconnecting element.

Both are served under ``TURBO_ASSETS_ROUTE`` (``/_turbocast/turbo.js`` and
``/_turbocast/turbocast.js``). Pages link them with a short digest of the file in
the query (``?v=3f2a9c01b7de``): a URL carrying the current digest is cached for a
year as immutable, so a page load costs no request for them, and the next release,
a new digest, a new URL. Any other URL is served with ``no-cache``.

``turbo.js`` is the build of ``@hotwired/turbo`` pinned in package-lock.json: in the
repository a link into node_modules (``npm ci``), in the wheel the file itself.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

from flask import abort, request, send_file, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from .errors import TurboError

logger = logging.getLogger("turbocast")

#: The endpoint name of the assets route.
ASSETS_ENDPOINT = "turbo_assets"
#: The files the route serves, by name; any other name is a 404.
FILES = {
    "turbo.js": Path(__file__).with_name("static") / "turbo.js",
    "turbocast.js": Path(__file__).with_name("static") / "turbocast.js",
}
#: The names as the route's converter takes them: ``'turbo.js', 'turbocast.js'``.
ASSET_NAMES = ", ".join(repr(name) for name in FILES)
#: A year: how long a browser keeps a file whose URL carries its digest.
IMMUTABLE_MAX_AGE = 365 * 24 * 3600


@functools.cache
def digest(name: str) -> str:
    """The first 12 hex digits of the file's SHA-256, read once per process.

    :param name: ``"turbo.js"`` or ``"turbocast.js"``.
    :raises TurboError: the file is missing (Turbo's, before ``npm ci`` in a checkout).
    """
    path = FILES[name]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TurboError(
            f"{path} is missing: in a checkout of turbocast, run `npm ci` for Turbo's JavaScript"
        ) from exc
    return hashlib.sha256(data).hexdigest()[:12]


def asset_url(name: str) -> str:
    """The cache-busting URL of one of the files: its route, with ``?v=<digest>``.

    :param name: ``"turbo.js"`` or ``"turbocast.js"``.
    """
    return url_for(ASSETS_ENDPOINT, name=name, v=digest(name))


def script_tag(name: str) -> Markup:
    """The ``<script type="module">`` of one of the files.

    :param name: ``"turbo.js"`` or ``"turbocast.js"``.
    """
    return Markup('<script type="module" src="{}"></script>').format(asset_url(name))


def serve_asset(name: str) -> BaseResponse:
    """``TURBO_ASSETS_ROUTE/<name>``: one of the files, immutable when asked for by digest.

    :param name: ``"turbo.js"`` or ``"turbocast.js"``.
    """
    path = FILES.get(name)
    if path is None:
        abort(404)
    try:
        current = digest(name)
    except TurboError as exc:
        logger.error("cannot serve %s", name, extra={"turbo_error": str(exc)})
        abort(404)
    fresh = request.args.get("v") == current
    response = send_file(
        path, mimetype="text/javascript", max_age=IMMUTABLE_MAX_AGE if fresh else None
    )
    if fresh:
        response.cache_control.immutable = True
    return response
