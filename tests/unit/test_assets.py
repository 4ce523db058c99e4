"""turbocast.assets and turbo_scripts(): Turbo's and turbocast's JavaScript, cache-busted."""

from __future__ import annotations

import hashlib
import re

import pytest

from app import create_app
from tests.support import ROOT
from turbocast import turbo_scripts, turbo_stream_source
from turbocast.assets import FILES, IMMUTABLE_MAX_AGE, digest

CONFIG = {"SECRET_KEY": "x", "REDIS_URL": "redis://127.0.0.1:1/0", "TESTING": True}
TURBO = ROOT / "node_modules" / "@hotwired" / "turbo" / "dist" / "turbo.es2017-esm.js"


@pytest.fixture
def app():
    return create_app(CONFIG)


def _v(name: str) -> str:
    return hashlib.sha256(FILES[name].read_bytes()).hexdigest()[:12]


def test_turbo_js_is_the_build_of_turbo_that_npm_installed():
    assert FILES["turbo.js"].read_bytes() == TURBO.read_bytes()


def test_the_digest_is_the_first_12_hex_digits_of_the_files_sha256():
    assert digest("turbo.js") == _v("turbo.js")
    assert digest("turbocast.js") == _v("turbocast.js")
    assert digest("turbo.js") != digest("turbocast.js")


def test_turbo_scripts_renders_turbo_and_the_reconnecting_element_by_default(app):
    with app.test_request_context("/"):
        html = turbo_scripts()

    assert html == (
        f'<script type="module" src="/_turbocast/turbo.js?v={_v("turbo.js")}"></script>'
        f'<script type="module" src="/_turbocast/turbocast.js?v={_v("turbocast.js")}"></script>'
    )


def test_turbo_scripts_without_turbo_is_for_an_app_that_bundles_its_own(app):
    with app.test_request_context("/"):
        html = turbo_scripts(turbo=False)

    assert html == (
        f'<script type="module" src="/_turbocast/turbocast.js?v={_v("turbocast.js")}"></script>'
    )


@pytest.mark.parametrize("transport", ["turbo", "sse"])
def test_turbo_scripts_leaves_out_the_element_for_the_other_transports(transport):
    app = create_app({**CONFIG, "TURBO_TRANSPORT": transport})
    with app.test_request_context("/"):
        assert turbo_scripts() == (
            f'<script type="module" src="/_turbocast/turbo.js?v={_v("turbo.js")}"></script>'
        )
        assert turbo_scripts(turbo=False) == ""


def test_turbo_scripts_is_a_template_global(app):
    with app.test_request_context("/"):
        # A global: macros imported without context see it too.
        rendered = app.jinja_env.from_string("{{ turbo_scripts(turbo=False) }}").render()

    assert rendered.startswith('<script type="module" src="/_turbocast/turbocast.js?v=')


def test_the_stream_source_links_the_element_at_the_same_url(app):
    with app.test_request_context("/"):
        scripts = turbo_scripts(turbo=False)
        source = turbo_stream_source()

    # Browsers run a module URL once: both tags on a page load the element once.
    assert source.startswith(scripts)


def test_urls_follow_turbo_assets_route_and_the_script_root():
    app = create_app({**CONFIG, "TURBO_ASSETS_ROUTE": "/static/push/"})
    with app.test_request_context("/", base_url="http://localhost/mounted"):
        html = turbo_scripts()

    assert re.findall(r'src="([^"?]+)', html) == [
        "/mounted/static/push/turbo.js",
        "/mounted/static/push/turbocast.js",
    ]
    client = app.test_client()
    with client.get("/static/push/turbo.js") as response:
        assert response.status_code == 200
    assert client.get("/_turbocast/turbo.js").status_code == 404


@pytest.mark.parametrize("name", ["turbo.js", "turbocast.js"])
def test_a_url_with_the_current_digest_is_served_immutable_for_a_year(app, name):
    client = app.test_client()

    response = client.get(f"/_turbocast/{name}", query_string={"v": digest(name)})

    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.data == FILES[name].read_bytes()
    assert response.cache_control.max_age == IMMUTABLE_MAX_AGE
    assert response.cache_control.immutable
    assert response.cache_control.public
    assert client.get_cookie("session") is None  # no session for a script
    response.close()


@pytest.mark.parametrize("query", [{}, {"v": "0123456789ab"}])
def test_any_other_url_of_a_file_is_served_without_caching(app, query):
    client = app.test_client()

    response = client.get("/_turbocast/turbo.js", query_string=query)

    assert response.status_code == 200
    assert response.data.startswith(b"/*!\nTurbo ")
    assert response.cache_control.no_cache
    assert not response.cache_control.immutable
    assert response.cache_control.max_age is None
    response.close()


@pytest.mark.parametrize(
    "path",
    [
        "/_turbocast/",
        "/_turbocast/turbo.js.map",
        "/_turbocast/../helpers.py",
        "/_turbocast/py.typed",
    ],
)
def test_only_the_two_files_are_served(app, path):
    assert app.test_client().get(path).status_code == 404
