"""``flask turbo``: parsing and formatting, the report order, and bad input (no Redis needed)."""

from __future__ import annotations

import json

import pytest

from app import create_app
from tests.unit.fake_pubsub import CHAT, NEWS, Factory, Waker
from turbocast.cli import (
    audience_channel,
    check_streams,
    format_history,
    format_reports,
)
from turbocast.control import parse_order, parse_report, report_payload
from turbocast.outbox import Outbox
from turbocast.relay import Relay

SID = "abcdefghijklmnop"
STREAM = (
    '<turbo-stream action="append" target="log">'
    "<template><p>hi<br>there</p></template></turbo-stream>"
)
BIG = 64 * 1024 * 1024


@pytest.mark.parametrize(
    "text", [STREAM, f"  {STREAM}\n{STREAM}\n", '<turbo-stream action="refresh"></turbo-stream>']
)
def test_turbo_stream_html_passes_the_check(text: str) -> None:
    assert check_streams(text) == text.count("<turbo-stream")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no <turbo-stream> element"),
        ("hello", "text outside"),
        ("<p>hi</p>", "<p> outside"),
        ('<turbo-stream target="x"></turbo-stream>', "without an action"),
        ('<turbo-stream action="append"><template>', "not closed"),
        (STREAM + "</div>", "closes nothing"),
        (STREAM + " trailing", "text outside"),
    ],
)
def test_anything_else_is_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="not Turbo Stream HTML") as info:
        check_streams(text)
    assert problem in str(info.value)


def test_audiences_name_channels_with_or_without_the_prefix() -> None:
    assert audience_channel(f"session:{SID}", "turbo") == f"turbo:session:{SID}"
    assert audience_channel(f"turbo:session:{SID}", "turbo") == f"turbo:session:{SID}"
    assert audience_channel("user:42", "app") == "app:user:42"
    assert audience_channel("stream:board:1", "turbo") == "turbo:stream:board:1"
    assert audience_channel("broadcast", "turbo") == "turbo:broadcast"
    assert audience_channel("all", "turbo") == "turbo:broadcast"
    for bad in ("session:short", "nothing", "user:has space", "broadcast:x"):
        with pytest.raises(ValueError):
            audience_channel(bad, "turbo")


def test_history_lines_show_id_exclusions_and_the_first_line() -> None:
    lines = format_history(
        [
            ("1-0", b"<turbo-stream a>\n<template>x</template>", None, None, None),
            ("2-0", b"<b>y</b>", SID.encode(), b"s" * 20, b"1700000000000000"),
        ]
    )
    assert lines == [
        "1-0  <turbo-stream a>",
        "2-0 (excludes session=abcdefgh…, socket=ssssssss…)  <b>y</b>",
    ]


def test_report_order_round_trips_and_is_no_disconnect() -> None:
    payload = report_payload("turbo:reply:abc")
    assert payload == b"report turbo:reply:abc"
    assert parse_report(payload) == b"turbo:reply:abc"
    assert parse_order(payload) is None
    assert parse_report(b"disconnect user a") is None
    assert parse_report(b"report a b") is None
    assert parse_report(b"report has\xffbyte") is None
    with pytest.raises(ValueError):
        report_payload("has space")


def _relay(sent: list[tuple[str, bytes]]) -> Relay:
    return Relay(
        "redis://unused.invalid/0",
        pubsub_factory=Factory(),
        waker=Waker(),
        sender=lambda channel, data: sent.append((channel, data)),
    )


def test_a_relay_reports_its_sockets_with_short_ids_on_the_reply_channel() -> None:
    sent: list[tuple[str, bytes]] = []
    relay = _relay(sent)
    relay.attach([CHAT, NEWS], Outbox(BIG), SID, "k" * 20, "alice")
    relay.attach([NEWS], Outbox(BIG), "z" * 16)

    relay._listener._order(b"report turbo:reply:1")

    ((channel, data),) = sent
    assert channel == "turbo:reply:1"
    report = json.loads(data)
    assert report["sockets"] == 2
    assert report["channels"] == {"broadcast": 2, "session:abcdefgh…": 1}
    assert report["socket_list"] == [
        {
            "session": "abcdefgh…",
            "user": "alice",
            "socket": "kkkkkkkk…",
            "channels": ["broadcast", "session:abcdefgh…"],
        },
        {"session": "zzzzzzzz…", "user": None, "socket": None, "channels": ["broadcast"]},
    ]
    lines = format_reports([report])
    assert lines[0].endswith(f"pid {report['pid']}: 2 socket(s)")
    assert any("session abcdefgh…  user alice" in line for line in lines)


def test_a_relay_with_many_sockets_reports_counts_per_channel_only() -> None:
    relay = _relay([])
    for _ in range(3):
        relay.attach([NEWS], Outbox(BIG))
    report = relay.snapshot(max_sockets=2)
    assert report["sockets"] == 3
    assert report["channels"] == {"broadcast": 3}
    assert report["socket_list"] is None
    assert "counts per channel only" in "\n".join(format_reports([report]))


@pytest.fixture
def runner():  # type: ignore[no-untyped-def]
    app = create_app({"SECRET_KEY": "x", "REDIS_URL": "redis://127.0.0.1:1/0", "TESTING": True})
    return app.test_cli_runner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish", "--session", SID], "not Turbo Stream HTML: text outside"),
        (["publish"], "name exactly one audience"),
        (["publish", "--all", "--user", "a"], "name exactly one audience"),
        (["publish", "--user", "has space"], "is not a usable user id"),
        (["history", "nothing"], "names no channel"),
        (["history", "broadcast", "--since", "x"], "is not a history id"),
        (["history", "broadcast", "--limit", "0"], "--limit"),
        (["disconnect", "--session", "short"], "is not a session id"),
        (["disconnect"], "name exactly one audience"),
    ],
)
def test_bad_input_is_a_usage_error_with_exit_2(runner, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    stdin = STREAM if "--user" in args else "plain text"
    result = runner.invoke(args=["turbo", *args], input=stdin)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
