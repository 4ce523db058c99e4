"""turbocast.rendering: a stream from a template and its variables, for any push."""

from __future__ import annotations

import pytest
from flask import Flask
from jinja2 import DictLoader

from turbocast import InvalidStreamError, TurboStream, render_stream

TEMPLATES = {
    "post.html": "<article id='post-{{ post.id }}'>{{ post.title }}</article>",
    "count.html": "{{ n }} new",
}


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.jinja_loader = DictLoader(TEMPLATES)  # type: ignore[assignment]
    return app


def test_render_stream_renders_the_template_with_its_variables_into_the_stream(app):
    with app.app_context():
        stream = render_stream(
            "append", "posts", template="post.html", post={"id": 7, "title": "<b>Hi</b>"}
        )

    assert isinstance(stream, TurboStream)
    assert stream.render() == (
        '<turbo-stream action="append" target="posts"><template>'
        "<article id='post-7'>&lt;b&gt;Hi&lt;/b&gt;</article>"  # Jinja2 autoescapes .html
        "</template></turbo-stream>"
    )


def test_render_stream_takes_targets_and_method_as_the_later_calls_do(app):
    with app.app_context():
        stream = render_stream(
            "update", targets=".count", method="morph", template="count.html", n=3
        )

    assert stream.render() == (
        '<turbo-stream action="update" targets=".count" method="morph">'
        "<template>3 new</template></turbo-stream>"
    )


@pytest.mark.parametrize(
    ("action", "target", "kwargs"),
    [
        ("explode", "x", {}),
        ("append", None, {}),
        ("append", "x", {"targets": ".y"}),
        ("append", "x", {"method": "morph"}),
    ],
)
def test_a_bad_stream_is_refused_before_the_template_renders(app, action, target, kwargs):
    with app.app_context(), pytest.raises(InvalidStreamError):
        # (The template does not exist: rendering it would raise TemplateNotFound.)
        render_stream(action, target, template="missing.html", **kwargs)


def test_render_stream_needs_an_app_context():
    with pytest.raises(RuntimeError, match="application context"):
        render_stream("append", "x", template="post.html")
