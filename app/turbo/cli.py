"""``flask turbo …``: publish, look at sockets and histories, sign out, from a shell.

Registered by :meth:`turbocast.Turbo.init_app` as the ``turbo`` group of the app's
CLI. Every command works through the app's own settings (Redis, prefix, limits),
as the app's workers do:

- ``publish``: send Turbo Stream HTML read from a file or stdin to a session, a
  user, a named stream or everyone; prints how many web processes received it.
- ``sockets``: ask every web process's relay, through the control channel, which
  sockets and channels it holds (a ``report`` order, see :mod:`turbocast.control`).
- ``history``: a channel's history entries.
- ``disconnect``: close a session's or a user's sockets everywhere (4003).

Bad input is a usage error (exit 2); Redis failing is an error (exit 1); never a traceback.
"""

from __future__ import annotations

import json
import time
import uuid
from html.parser import HTMLParser
from typing import Any, TextIO

import click
import redis
from flask import current_app
from flask.cli import AppGroup
from markupsafe import Markup
from redis.cluster import RedisCluster

from .channels import (
    broadcast_channel,
    channel_for,
    control_channel,
    history_key,
    stream_channel,
    user_channel,
)
from .control import report_payload
from .errors import TurboError
from .history import START, Entry, parse_id
from .publisher import Publisher
from .topology import publish

turbo_cli = AppGroup("turbo", help="turbocast: publish streams, list sockets, read histories.")

# Elements with no end tag: they do not open a level.
_VOID = frozenset(
    "area base br col embed hr img input link meta source track wbr".split()  # noqa: SIM905
)


class _StreamChecker(HTMLParser):
    """Checks that a text is one or more ``<turbo-stream action=…>`` elements, nothing else."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.count = 0
        self.problem: str | None = None

    def _fail(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth == 0:
            if tag != "turbo-stream":
                self._fail(f"<{tag}> outside a <turbo-stream> element")
                return
            if not dict(attrs).get("action"):
                self._fail("a <turbo-stream> without an action attribute")
            self.count += 1
        if tag not in _VOID:
            self.depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth == 0:
            self._fail(f"<{tag} /> outside a <turbo-stream> element")

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if self.depth == 0:
            self._fail(f"</{tag}> closes nothing")
            return
        self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth == 0 and data.strip():
            self._fail(f"text outside a <turbo-stream> element: {data.strip()[:40]!r}")


def check_streams(text: str) -> int:
    """How many ``<turbo-stream>`` elements ``text`` is made of.

    :param text: the HTML to publish.
    :raises ValueError: empty, or anything besides ``<turbo-stream action=…>`` elements
        (and whitespace) at the top level, or an element left open.
    """
    checker = _StreamChecker()
    checker.feed(text)
    checker.close()
    if checker.problem is None and checker.depth:
        checker.problem = "a <turbo-stream> element is not closed"
    if checker.problem is None and checker.count == 0:
        checker.problem = "no <turbo-stream> element"
    if checker.problem is not None:
        raise ValueError(f"not Turbo Stream HTML: {checker.problem}")
    return checker.count


def audience_channel(audience: str, prefix: str) -> str:
    """The channel an audience names: ``session:<id>``, ``user:<id>``, ``stream:<name>``,
    ``broadcast`` (or ``all``), each with or without the prefix.

    :param audience: what the user typed.
    :param prefix: the channel namespace.
    :raises ValueError: anything else (or a malformed id).
    """
    rest = audience[len(prefix) + 1 :] if audience.startswith(f"{prefix}:") else audience
    kind, sep, ident = rest.partition(":")
    try:
        if kind in ("broadcast", "all") and not sep:
            return broadcast_channel(prefix)
        if kind == "session" and sep:
            return channel_for(ident, prefix)
        if kind == "user" and sep:
            return user_channel(ident, prefix)
        if kind == "stream" and sep:
            return stream_channel(ident, prefix)
    except TurboError as exc:
        raise ValueError(str(exc)) from exc
    raise ValueError(
        f"{audience!r} names no channel: use session:<id>, user:<id>, stream:<name> or broadcast"
    )


def _publisher() -> Publisher:
    state = current_app.extensions.get("turbo")
    if state is None:
        raise click.ClickException("turbocast is not set up on this app")
    try:
        return state.publisher  # type: ignore[no-any-return]
    except TurboError as exc:
        raise click.ClickException(str(exc)) from exc


def _prefix() -> str:
    return str(current_app.config["TURBO_CHANNEL_PREFIX"])


def _one_audience(**options: Any) -> tuple[str, Any]:
    given = [(name, value) for name, value in options.items() if value not in (None, False)]
    if len(given) != 1:
        names = " | ".join(f"--{name}" for name in options)
        raise click.UsageError(f"name exactly one audience: {names}")
    return given[0]


@turbo_cli.command("publish")
@click.option("--session", "session", metavar="SID", help="one browser session's id")
@click.option("--user", "user", metavar="UID", help="one user's id")
@click.option("--stream", "stream", metavar="NAME", help="a named stream")
@click.option("--all", "everyone", is_flag=True, help="every socket")
@click.argument("file", type=click.File("r"), default="-")
def publish_command(
    session: str | None, user: str | None, stream: str | None, everyone: bool, file: TextIO
) -> None:
    """Publish the <turbo-stream> HTML in FILE (default: stdin) to one audience."""
    kind, ident = _one_audience(session=session, user=user, stream=stream, all=everyone)
    text = file.read()
    try:
        check_streams(text)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    publisher = _publisher()
    html = Markup(text.strip())  # noqa: S704 - checked above; the operator's own HTML
    try:
        if kind == "session":
            receivers = publisher.to_session(ident, html)
        elif kind == "user":
            receivers = publisher.to_user(ident, html)
        elif kind == "stream":
            receivers = publisher.to_stream(ident, html)
        else:
            receivers = publisher.to_all(html)
    except TurboError as exc:
        raise _error(exc) from exc
    click.echo(
        f"published to {kind}{'' if kind == 'all' else ' ' + ident}: "
        f"{receivers} web process(es) received it"
    )


@turbo_cli.command("disconnect")
@click.option("--session", "session", metavar="SID", help="one browser session's id")
@click.option("--user", "user", metavar="UID", help="one user's id")
def disconnect_command(session: str | None, user: str | None) -> None:
    """Close every socket of a session or a user, in every web process (close 4003)."""
    kind, ident = _one_audience(session=session, user=user)
    publisher = _publisher()
    try:
        receivers = (
            publisher.disconnect_session(ident)
            if kind == "session"
            else publisher.disconnect_user(ident)
        )
    except TurboError as exc:
        raise _error(exc) from exc
    click.echo(f"sign-out of {kind} {ident} sent: {receivers} web process(es) received it")


def _error(exc: TurboError) -> click.ClickException:
    # A malformed id is the caller's input (exit 2); Redis refusing is not (exit 1).
    from .errors import InvalidChannelError

    if isinstance(exc, InvalidChannelError):
        return click.UsageError(str(exc))
    return click.ClickException(str(exc))


@turbo_cli.command("history")
@click.argument("audience")
@click.option("--since", default=START, metavar="ID", help="only entries after this id")
@click.option("--limit", default=20, type=click.IntRange(min=1), help="the newest N shown")
def history_command(audience: str, since: str, limit: int) -> None:
    """Show a channel's history: AUDIENCE is session:<id>, user:<id>, stream:<name> or
    broadcast."""
    prefix = _prefix()
    try:
        channel = audience_channel(audience, prefix)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        parse_id(since)
    except ValueError as exc:
        raise click.BadParameter(
            f"{since!r} is not a history id (<ms>-<seq>)", param_hint="--since"
        ) from exc
    publisher = _publisher()
    try:
        entries, gap = publisher.history.since(history_key(channel, prefix), since)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {exc}") from exc
    for line in format_history(entries[-limit:]):
        click.echo(line)
    shown = min(limit, len(entries))
    note = "; older ones are gone or past what one replay brings" if gap else ""
    click.echo(f"({shown} of {len(entries)} entries{note})")


def format_history(entries: list[Entry]) -> list[str]:
    """One line per entry: its id, whom it excludes, the first line of its HTML.

    :param entries: :meth:`History.since`'s entries.
    """
    lines = []
    for ident, html, session, socket, _published in entries:
        first = html.decode("utf-8", "replace").strip().splitlines()[:1]
        excluded = []
        if session is not None:
            excluded.append(f"session={session.decode()[:8]}…")
        if socket is not None:
            excluded.append(f"socket={socket.decode()[:8]}…")
        head = ident + (f" (excludes {', '.join(excluded)})" if excluded else "")
        text = first[0] if first else ""
        lines.append(f"{head}  {text[:100]}")
    return lines


@turbo_cli.command("sockets")
@click.option("--json", "as_json", is_flag=True, help="the relays' replies as JSON")
@click.option("--timeout", default=5.0, type=click.FloatRange(min=0.1), help="seconds to wait")
def sockets_command(as_json: bool, timeout: float) -> None:
    """Ask every web process which sockets and channels it holds now."""
    publisher = _publisher()
    try:
        reports, asked = ask_relays(publisher.client, _prefix(), timeout)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {exc}") from exc
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        for line in format_reports(reports):
            click.echo(line)
    if len(reports) < asked:
        click.echo(
            f"warning: {asked - len(reports)} of {asked} web process(es) did not answer "
            f"within {timeout:g}s",
            err=True,
        )


def ask_relays(
    client: redis.Redis, prefix: str, timeout: float
) -> tuple[list[dict[str, Any]], int]:
    """Send a ``report`` order and collect the replies: ``(replies, relays asked)``.

    Subscribes to a reply channel of its own first, so no reply comes before it listens;
    PUBLISH says how many relays got the order: that many replies are awaited.

    :param client: a Redis client.
    :param prefix: the channel namespace.
    :param timeout: the most seconds to wait for every reply.
    """
    reply = f"{prefix}:reply:{uuid.uuid4().hex}"
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    # A Redis Cluster's relays listen on sharded pub/sub (and reply there).
    sharded = isinstance(client, RedisCluster)
    get_message = pubsub.get_sharded_message if sharded else pubsub.get_message
    try:
        (pubsub.ssubscribe if sharded else pubsub.subscribe)(reply)
        deadline = time.monotonic() + timeout
        # Wait for the confirmation: the subscription is in place before anyone replies.
        while get_message(timeout=0.1) is None and not pubsub.subscribed:
            if time.monotonic() > deadline:
                raise redis.TimeoutError("the reply channel's subscription was not confirmed")
        asked = publish(client, sharded, control_channel(prefix), report_payload(reply))
        reports: list[dict[str, Any]] = []
        while len(reports) < asked:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = get_message(timeout=min(left, 1.0))
            if message is None or message.get("type") not in ("message", "smessage"):
                continue
            try:
                reports.append(json.loads(message["data"]))
            except ValueError:
                continue
        return sorted(reports, key=lambda r: (str(r.get("host")), int(r.get("pid", 0)))), asked
    finally:
        pubsub.close()


def format_reports(reports: list[dict[str, Any]]) -> list[str]:
    """A readable table of relays' replies: a line per process, then its channels and sockets.

    :param reports: the replies (see :meth:`turbocast.relay.Relay.snapshot`).
    """
    lines = []
    for report in reports:
        lines.append(
            f"{report.get('host')} pid {report.get('pid')}: {report.get('sockets')} socket(s)"
        )
        channels = report.get("channels") or {}
        if channels:
            width = max(len(name) for name in channels)
            lines.append("  channels:")
            lines += [f"    {name:<{width}}  {count}" for name, count in channels.items()]
        listed = report.get("socket_list")
        if listed is None:
            lines.append("  (too many sockets to list one by one: counts per channel only)")
        elif listed:
            lines.append("  sockets:")
            for sock in listed:
                lines.append(
                    f"    session {sock.get('session') or '-'}  user {sock.get('user') or '-'}  "
                    f"socket {sock.get('socket') or '-'}  {' '.join(sock.get('channels', []))}"
                )
    if not reports:
        lines.append("no web process answered")
    return lines
