"""turbocast.streams: the HTML of every stream, its escaping, and its refusals.

Besides exact strings, each output is parsed back with the stdlib HTML parser, so the
tests also say what a browser (and Turbo 8) would see: how many ``<turbo-stream>``
elements, which attributes, and what sits inside ``<template>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from markupsafe import Markup

from turbocast.errors import InvalidStreamError, TurboError
from turbocast.streams import ACTIONS, MIME_TYPE, TurboStream, render_streams

TEMPLATE_ACTIONS = ["append", "prepend", "replace", "update", "before", "after"]
XSS_ATTR = 'x" onmouseover="alert(1)'
XSS_TAGS = "</template><script>alert(1)</script>"


# -- a tiny DOM, enough to see what the browser sees -------------------------------------

_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    children: list[Element | str] = field(default_factory=list)

    def find_all(self, tag: str) -> list[Element]:
        found = [self] if self.tag == tag else []
        for child in self.children:
            if isinstance(child, Element):
                found.extend(child.find_all(tag))
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        names = [name for name, _ in attrs]
        # A browser keeps the first of two equal attributes: never let that decide anything.
        assert len(names) == len(set(names)), f"duplicate attribute in <{tag}>: {names}"
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        children = self.stack[-1].children
        if children and isinstance(children[-1], str):
            children[-1] += data
        else:
            children.append(data)


def parse(html: str) -> list[Element | str]:
    """Parse an HTML fragment into (tag, attrs, children) nodes; every tag must be closed."""
    builder = _TreeBuilder()
    builder.feed(str(html))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root.children


def parse_streams(html: str) -> list[Element]:
    """Parse a message and check it is nothing but top-level ``<turbo-stream>`` elements."""
    nodes = parse(html)
    assert all(isinstance(node, Element) and node.tag == "turbo-stream" for node in nodes), nodes
    return [node for node in nodes if isinstance(node, Element)]


def parse_stream(html: str) -> Element:
    (stream,) = parse_streams(html)
    return stream


def template_of(stream: Element) -> Element:
    """The stream's one child, which Turbo requires to be a ``<template>``."""
    assert len(stream.children) == 1, stream.children
    (template,) = stream.children
    assert isinstance(template, Element) and template.tag == "template"
    return template


# -- constants ---------------------------------------------------------------------------


def test_mime_type_is_turbo_stream_html():
    assert MIME_TYPE == "text/vnd.turbo-stream.html"


def test_actions_are_the_eight_turbo_8_actions():
    assert frozenset(TEMPLATE_ACTIONS + ["remove", "refresh"]) == ACTIONS
    assert isinstance(ACTIONS, frozenset)


def test_invalid_stream_error_is_a_turbo_error_and_a_value_error():
    with pytest.raises(TurboError):
        TurboStream().action("nope")
    with pytest.raises(ValueError):
        TurboStream().action("nope")


# -- every action, both ways -------------------------------------------------------------


@pytest.mark.parametrize("action", TEMPLATE_ACTIONS)
def test_short_constructor_renders_action_target_and_template(action):
    stream = getattr(TurboStream, action)("messages", Markup("<li>hi</li>"))

    html = stream.render()

    assert html == (
        f'<turbo-stream action="{action}" target="messages">'
        "<template><li>hi</li></template></turbo-stream>"
    )
    assert isinstance(html, Markup)
    element = parse_stream(html)
    assert element.attrs == {"action": action, "target": "messages"}
    assert template_of(element).children == parse("<li>hi</li>")


@pytest.mark.parametrize("action", TEMPLATE_ACTIONS)
def test_chaining_renders_the_same_as_the_short_constructor(action):
    chained = TurboStream(Markup("<li>hi</li>")).action(action).target("messages")

    short = getattr(TurboStream, action)("messages", Markup("<li>hi</li>"))
    assert chained.render() == short.render()
    assert chained == short


@pytest.mark.parametrize("action", TEMPLATE_ACTIONS)
def test_short_constructor_takes_targets_css_selector(action):
    stream = getattr(TurboStream, action)(targets=".item", content=Markup("<p>x</p>"))

    element = parse_stream(stream.render())

    assert element.attrs == {"action": action, "targets": ".item"}
    assert template_of(element).children == parse("<p>x</p>")


@pytest.mark.parametrize("action", [*TEMPLATE_ACTIONS, "remove"])
def test_short_constructor_refuses_both_target_and_targets(action):
    with pytest.raises(InvalidStreamError, match="exactly one"):
        getattr(TurboStream, action)("a", targets=".b")


@pytest.mark.parametrize("action", [*TEMPLATE_ACTIONS, "remove"])
def test_short_constructor_refuses_neither_target_nor_targets(action):
    with pytest.raises(InvalidStreamError, match="exactly one"):
        getattr(TurboStream, action)()


def test_template_action_without_content_renders_an_empty_template():
    html = TurboStream.update("counter").render()

    assert html == (
        '<turbo-stream action="update" target="counter"><template></template></turbo-stream>'
    )
    assert template_of(parse_stream(html)).children == []


def test_remove_renders_without_template():
    html = TurboStream.remove("message_1").render()

    assert html == '<turbo-stream action="remove" target="message_1"></turbo-stream>'
    assert parse_stream(html).children == []


def test_remove_by_chaining_and_with_targets():
    assert TurboStream().action("remove").target("m1") == TurboStream.remove("m1")
    html = TurboStream.remove(targets=".done").render()
    assert html == '<turbo-stream action="remove" targets=".done"></turbo-stream>'


def test_remove_refuses_content():
    stream = TurboStream(Markup("<p>gone</p>")).action("remove").target("m1")

    with pytest.raises(InvalidStreamError, match="remove takes no content"):
        stream.render()


def test_template_action_without_target_is_refused_at_render():
    with pytest.raises(InvalidStreamError, match="append needs a target or targets"):
        TurboStream("x").action("append").render()


def test_stream_without_action_is_refused_at_render():
    with pytest.raises(InvalidStreamError, match="no action"):
        TurboStream("x").target("t").render()


# -- targets -----------------------------------------------------------------------------


def test_targets_css_selector_is_escaped_and_parses_back_unchanged():
    selector = '#list > li.item[data-x="1"]'

    html = TurboStream.append(targets=selector, content="hi").render()

    assert html == (
        '<turbo-stream action="append" targets="#list &gt; li.item[data-x=&#34;1&#34;]">'
        "<template>hi</template></turbo-stream>"
    )
    assert parse_stream(html).attrs == {"action": "append", "targets": selector}


def test_setting_target_clears_targets_and_the_other_way_round():
    base = TurboStream("x").action("append")

    assert parse_stream(base.targets(".a").target("b").render()).attrs == {
        "action": "append",
        "target": "b",
    }
    assert parse_stream(base.target("b").targets(".a").render()).attrs == {
        "action": "append",
        "targets": ".a",
    }


@pytest.mark.parametrize("bad", ["", None, 42])
def test_empty_or_non_string_target_is_refused(bad):
    with pytest.raises(InvalidStreamError):
        TurboStream().target(bad)
    with pytest.raises(InvalidStreamError):
        TurboStream().targets(bad)


# -- method (morph) ----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["replace", "update"])
def test_replace_and_update_with_morph_set_method_attribute(action):
    html = getattr(TurboStream, action)("card", Markup("<p>x</p>"), method="morph").render()

    assert html == (
        f'<turbo-stream action="{action}" target="card" method="morph">'
        "<template><p>x</p></template></turbo-stream>"
    )
    assert parse_stream(html).attrs == {"action": action, "target": "card", "method": "morph"}


def test_replace_with_morph_by_chaining_in_any_order():
    one = TurboStream("x").method("morph").target("card").action("replace")
    two = TurboStream("x").action("replace").target("card").method("morph")

    assert one.render() == two.render()
    assert one.render() == TurboStream.replace("card", "x", method="morph").render()


def test_replace_accepts_method_replace():
    element = parse_stream(TurboStream.replace("card", "x", method="replace").render())
    assert element.attrs["method"] == "replace"


@pytest.mark.parametrize("action", ["append", "prepend", "before", "after", "remove"])
def test_morph_is_refused_on_actions_without_method(action):
    stream = TurboStream().action(action).target("card").method("morph")

    with pytest.raises(InvalidStreamError, match=f"method is only for .*not {action}"):
        stream.render()


def test_unknown_method_value_is_refused():
    with pytest.raises(InvalidStreamError, match="morph"):
        TurboStream().method("fade")
    with pytest.raises(InvalidStreamError):
        TurboStream.update("x", method="Morph")


# -- refresh -----------------------------------------------------------------------------


def test_refresh_with_request_id():
    html = TurboStream.refresh(request_id="abc").render()

    assert html == '<turbo-stream action="refresh" request-id="abc"></turbo-stream>'
    element = parse_stream(html)
    assert element.attrs == {"action": "refresh", "request-id": "abc"}
    assert element.children == []


def test_refresh_with_request_id_method_and_scroll_in_attribute_order():
    html = TurboStream.refresh(request_id="abc", method="morph", scroll="preserve").render()

    assert html == (
        '<turbo-stream action="refresh" method="morph" request-id="abc" scroll="preserve">'
        "</turbo-stream>"
    )


def test_refresh_by_chaining_equals_short_constructor():
    chained = TurboStream().action("refresh").scroll("reset").request_id("r1").method("replace")

    short = TurboStream.refresh(request_id="r1", method="replace", scroll="reset")
    assert chained.render() == short.render()


def test_bare_refresh_has_only_the_action():
    assert TurboStream.refresh().render() == '<turbo-stream action="refresh"></turbo-stream>'


@pytest.mark.parametrize("aim", [lambda s: s.target("page"), lambda s: s.targets("body")])
def test_refresh_refuses_target_and_targets(aim):
    with pytest.raises(InvalidStreamError, match="refresh takes no target"):
        aim(TurboStream.refresh()).render()


def test_refresh_refuses_content():
    with pytest.raises(InvalidStreamError, match="refresh takes no content"):
        TurboStream(Markup("<p>x</p>")).action("refresh").render()


@pytest.mark.parametrize("setter", [lambda s: s.request_id("abc"), lambda s: s.scroll("preserve")])
def test_request_id_and_scroll_are_refused_outside_refresh(setter):
    with pytest.raises(InvalidStreamError, match="only for refresh"):
        setter(TurboStream.replace("card", "x")).render()


def test_unknown_scroll_value_is_refused():
    with pytest.raises(InvalidStreamError, match="preserve"):
        TurboStream.refresh(scroll="top")


def test_refresh_request_id_is_escaped():
    html = TurboStream.refresh(request_id=XSS_ATTR).render()

    assert parse_stream(html).attrs == {"action": "refresh", "request-id": XSS_ATTR}


# -- custom actions and extra attributes -------------------------------------------------


def test_custom_action_with_extra_attributes():
    stream = TurboStream.custom_action(
        "set_title", "page", Markup("<b>x</b>"), title="Inbox (3)", data_count=3
    )

    html = stream.render()

    assert html == (
        '<turbo-stream action="set_title" target="page" title="Inbox (3)" data-count="3">'
        "<template><b>x</b></template></turbo-stream>"
    )
    element = parse_stream(html)
    assert element.attrs == {
        "action": "set_title",
        "target": "page",
        "title": "Inbox (3)",
        "data-count": "3",
    }
    assert template_of(element).children == parse("<b>x</b>")


def test_custom_action_by_chaining_keeps_attribute_insertion_order():
    stream = (
        TurboStream()
        .custom("console-log", level="info")
        .attr("message", "hello")
        .attr("data-at", 1.5)
    )

    assert stream.render() == (
        '<turbo-stream action="console-log" level="info" message="hello" data-at="1.5">'
        "<template></template></turbo-stream>"
    )


def test_custom_action_may_have_no_target():
    element = parse_stream(TurboStream.custom_action("redirect_to", url="/inbox").render())

    assert element.attrs == {"action": "redirect_to", "url": "/inbox"}


def test_custom_action_takes_targets():
    element = parse_stream(TurboStream.custom_action("highlight", targets=".row").render())

    assert element.attrs == {"action": "highlight", "targets": ".row"}


def test_custom_action_refuses_both_target_and_targets():
    with pytest.raises(InvalidStreamError, match="not both"):
        TurboStream.custom_action("highlight", "row", targets=".row")


@pytest.mark.parametrize("name", ["", "Log", "1log", "log it", 'x"y', "log>", "é"])
def test_malformed_custom_action_name_is_refused(name):
    with pytest.raises(InvalidStreamError, match="custom action"):
        TurboStream().custom(name)


def test_unknown_action_is_refused_with_a_pointer_to_custom():
    with pytest.raises(InvalidStreamError, match=r"\.custom\(") as excinfo:
        TurboStream().action("console_log")

    assert "custom_action" in str(excinfo.value)


def test_attr_none_removes_and_setting_again_replaces_in_place():
    stream = TurboStream().custom("x", a="1", b="2", c="3").attr("b", None).attr("A", "9")

    html = stream.render()

    assert html == '<turbo-stream action="x" A="9" c="3"><template></template></turbo-stream>'
    assert parse_stream(html).attrs == {"action": "x", "a": "9", "c": "3"}


def test_custom_action_refuses_method_which_belongs_to_replace_update_refresh():
    with pytest.raises(InvalidStreamError, match="method is only for"):
        TurboStream().custom("x").method("morph").render()


def test_extra_attribute_may_not_duplicate_a_built_in_one():
    stream = TurboStream.replace("card", "x", method="morph").attr("method", "replace")

    with pytest.raises(InvalidStreamError, match="set twice"):
        stream.render()


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "-x", "on click", 'a"b', "a>b", "a=b", "a/b", "é", "action", "TARGET", "targets"],
)
def test_bad_or_reserved_attribute_names_are_refused(name):
    with pytest.raises(InvalidStreamError):
        TurboStream().attr(name, "v")


def test_reserved_attribute_is_refused_as_custom_keyword():
    with pytest.raises(InvalidStreamError, match="reserved|set by"):
        TurboStream().custom("x", action="append")


@pytest.mark.parametrize("value", [True, False, b"x", ["x"]])
def test_attribute_values_other_than_str_int_float_are_refused(value):
    with pytest.raises(InvalidStreamError):
        TurboStream().attr("data-x", value)


@pytest.mark.parametrize("name", ["data-x", "_x", "xlink:href", "aria-label", "a.b"])
def test_well_formed_attribute_names_are_accepted(name):
    element = parse_stream(TurboStream().custom("x").attr(name, "v").render())

    assert element.attrs[name.lower()] == "v"


# -- escaping ----------------------------------------------------------------------------


@pytest.mark.parametrize("evil", [XSS_ATTR, XSS_TAGS, "a'b&c<d>"])
def test_target_is_escaped_and_cannot_add_attributes_or_elements(evil):
    html = TurboStream.append(evil, Markup("<p>x</p>")).render()

    element = parse_stream(html)
    assert element.attrs == {"action": "append", "target": evil}
    assert template_of(element).children == parse("<p>x</p>")
    assert element.find_all("script") == []


@pytest.mark.parametrize("evil", [XSS_ATTR, XSS_TAGS, "a'b&c<d>"])
def test_attribute_values_are_escaped(evil):
    html = TurboStream.custom_action("notify", "box", message=evil).render()

    element = parse_stream(html)
    assert element.attrs == {"action": "notify", "target": "box", "message": evil}
    assert element.find_all("script") == []
    assert '"' not in html.split('message="', 1)[1].split('"', 1)[0]


def test_plain_str_content_is_escaped_as_text():
    html = TurboStream.append("messages", XSS_TAGS).render()

    assert html == (
        '<turbo-stream action="append" target="messages"><template>'
        "&lt;/template&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
        "</template></turbo-stream>"
    )
    assert template_of(parse_stream(html)).children == [XSS_TAGS]


def test_markup_content_is_inserted_as_is():
    html = TurboStream.append("messages", Markup("<em>hi</em> &amp; bye")).render()

    assert "<template><em>hi</em> &amp; bye</template>" in html
    assert template_of(parse_stream(html)).children == parse("<em>hi</em> &amp; bye")


def test_object_with_dunder_html_is_inserted_as_is():
    class Rendered:
        def __html__(self):
            return "<strong>ok</strong>"

    html = TurboStream(Rendered()).action("update").target("status").render()

    assert template_of(parse_stream(html)).children == parse("<strong>ok</strong>")


def test_none_content_is_empty():
    assert TurboStream(None).action("update").target("t") == TurboStream.update("t", "")


@pytest.mark.parametrize("content", [b"<p>x</p>", 42, ["x"]])
def test_content_of_other_types_is_refused(content):
    with pytest.raises(InvalidStreamError, match="content"):
        TurboStream(content)


# -- several streams in one message ------------------------------------------------------


def test_render_streams_joins_several_streams_into_one_message():
    message = render_streams(
        TurboStream.append("messages", Markup("<li>1</li>")),
        TurboStream.remove("typing"),
        TurboStream.update(targets=".count", content="2"),
        TurboStream.refresh(request_id="r"),
    )

    assert isinstance(message, Markup)
    elements = parse_streams(message)
    assert [e.attrs for e in elements] == [
        {"action": "append", "target": "messages"},
        {"action": "remove", "target": "typing"},
        {"action": "update", "targets": ".count"},
        {"action": "refresh", "request-id": "r"},
    ]
    assert template_of(elements[0]).children == parse("<li>1</li>")
    assert elements[1].children == [] and elements[3].children == []
    assert template_of(elements[2]).children == ["2"]


def test_render_streams_accepts_markup_streams():
    rendered = Markup('<turbo-stream action="remove" target="a"></turbo-stream>')

    message = render_streams(rendered, TurboStream.remove("b"))

    assert [e.attrs["target"] for e in parse_streams(message)] == ["a", "b"]


def test_render_streams_refuses_plain_str():
    with pytest.raises(InvalidStreamError, match="Markup"):
        render_streams(TurboStream.remove("a"), '<turbo-stream action="remove"></turbo-stream>')


def test_render_streams_of_nothing_is_empty():
    assert render_streams() == Markup("")


def test_render_streams_validates_each_stream():
    with pytest.raises(InvalidStreamError, match="no action"):
        render_streams(TurboStream.remove("a"), TurboStream("x"))


# -- value behaviour ---------------------------------------------------------------------


def test_chaining_returns_new_streams_so_a_base_can_be_reused():
    base = TurboStream(Markup("<li>new</li>")).action("append")

    inbox = base.target("inbox")
    lists = base.targets(".list")
    morphing = TurboStream.replace("a", "x")
    morphed = morphing.method("morph").attr("data-x", "1")

    assert parse_stream(inbox.render()).attrs == {"action": "append", "target": "inbox"}
    assert parse_stream(lists.render()).attrs == {"action": "append", "targets": ".list"}
    assert parse_stream(morphing.render()).attrs == {"action": "replace", "target": "a"}
    assert "method" in parse_stream(morphed.render()).attrs
    with pytest.raises(InvalidStreamError, match="needs a target"):
        base.render()
    assert inbox is not base and lists is not base


def test_every_chaining_method_returns_a_new_stream():
    base = TurboStream()
    results = [
        base.action("append"),
        base.custom("x"),
        base.target("t"),
        base.targets(".t"),
        base.method("morph"),
        base.request_id("r"),
        base.scroll("reset"),
        base.attr("data-x", "1"),
    ]

    assert all(isinstance(r, TurboStream) and r is not base for r in results)
    assert base == TurboStream()


def test_html_str_and_render_agree():
    stream = TurboStream.append("m", Markup("<i>x</i>"))

    assert stream.__html__() == stream.render() == str(stream)
    assert Markup("{}").format(stream) == stream.render()


def test_equal_streams_are_equal_and_hash_alike():
    one = TurboStream.append("m", "a<b")
    two = TurboStream("a<b").action("append").target("m")

    assert one == two
    assert hash(one) == hash(two)
    assert one != TurboStream.append("n", "a<b")
    assert one != one.render()


def test_escaped_str_and_equivalent_markup_are_equal_content():
    assert TurboStream.append("m", "a<b") == TurboStream.append("m", Markup("a&lt;b"))


def test_repr_shows_action_and_target():
    assert repr(TurboStream.append("m", "x")) == "TurboStream(action='append', target='m')"
    assert repr(TurboStream.remove(targets=".x")) == "TurboStream(action='remove', targets='.x')"
