"""Every Turbo Stream action, pushed from another process, does in Chromium what Turbo documents."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.browser.test_demo import Tab
from tests.support import ROOT, numsub, wait_for
from turbocast import channel_for

PUSH = textwrap.dedent(
    """
    import sys
    from app.demo.services import every_action
    from turbocast import Publisher, TurboStream

    publisher = Publisher(sys.argv[1])
    streams = every_action() if sys.argv[3] == "every" else [TurboStream.refresh(method="morph")]
    print(publisher.to_session(sys.argv[2], *streams))
    """
)


def _push(redis_url: str, session_id: str, what: str) -> None:
    """Publish from a separate Python process with no Flask app, as a worker would."""
    result = subprocess.run(
        [sys.executable, "-c", PUSH, redis_url, session_id, what],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "1", result.stderr


MARK = """() => {
    for (const sel of ['#replace-box', '#update-box', '#morph-replace-box', '#morph-update-box p'])
        document.querySelector(sel).turbocastMark = sel;
    window.documentMark = 'same document';
}"""

STATE = """() => {
    const q = s => document.querySelector(s);
    const kids = s => Array.from(q(s).children).map(e => e.className || e.tagName.toLowerCase());
    return {
        append: kids('#append-box'),
        prepend: kids('#prepend-box'),
        replace: [q('#replace-box').className, q('#replace-box').textContent,
                  q('#replace-box').turbocastMark || null],
        update: [q('#update-box').innerHTML, q('#update-box').turbocastMark || null],
        removed: q('#remove-box') === null,
        before: q('#before-box').previousElementSibling?.className || null,
        after: q('#after-box').nextElementSibling?.className || null,
        morphReplace: [q('#morph-replace-box').className, q('#morph-replace-box p').textContent,
                       q('#morph-replace-box').turbocastMark || null],
        morphUpdate: [q('#morph-update-box p').textContent,
                      q('#morph-update-box p').turbocastMark || null],
        many: Array.from(document.querySelectorAll('#many-boxes li')).map(e => e.innerHTML),
        documentMark: window.documentMark || null,
    };
}"""


def test_every_action_from_another_process_does_what_turbo_documents(context, stack, redis_client):
    tab = Tab(context, stack.base_url).open("/actions")
    tab.connected()
    sid = tab.session_id()
    wait_for(lambda: numsub(redis_client, channel_for(sid)) == 1)
    tab.page.evaluate(MARK)

    _push(stack.redis_url, sid, "every")
    tab.page.wait_for_selector("#many-boxes li b")  # the last stream of the message
    state = tab.page.evaluate(STATE)

    assert state["append"] == ["p", "appended"]  # after the last child
    assert state["prepend"] == ["prepended", "p"]  # before the first child
    # replace: the element itself is swapped for a new one
    assert state["replace"] == ["replaced", "replaced", None]
    # update: the same element, new contents
    assert state["update"] == ['<p class="updated">updated</p>', "#update-box"]
    assert state["removed"] is True
    assert state["before"] == "inserted-before"  # a sibling before the target
    assert state["after"] == "inserted-after"  # a sibling after the target
    # method="morph": the very same nodes, morphed into the new content
    assert state["morphReplace"] == ["morph morphed", "morphed", "#morph-replace-box"]
    assert state["morphUpdate"] == ["morphed inside", "#morph-update-box p"]
    # targets= a CSS selector: every match
    assert state["many"] == ["<b>many</b>"] * 3
    assert state["documentMark"] == "same document"

    # refresh: Turbo fetches the page again and renders it, without reloading the document
    tab.connected()
    _push(stack.redis_url, sid, "refresh")
    tab.page.wait_for_selector("#remove-box")
    state = tab.page.evaluate(STATE)
    assert state["removed"] is False
    assert state["append"] == ["p"]
    assert state["many"] == ["one", "two", "three"]
    assert state["documentMark"] == "same document"


def test_run_every_action_button_has_a_worker_push_them(context, stack):
    tab = Tab(context, stack.base_url).open("/actions")
    tab.connected()
    tab.page.click("#run-actions")
    tab.page.wait_for_selector("#many-boxes li b")
    state = tab.page.evaluate(STATE)
    assert state["removed"] is True
    assert state["replace"][0] == "replaced"
