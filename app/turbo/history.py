"""Each channel's recent messages, kept in a Redis Stream, so nothing Redis accepted is lost.

Publishing appends to the channel's history and publishes in one round trip (a
Lua script: XADD, trim by count and age, PUBLISH ``"<id>;t=<µs> <html>"``, with
``;x=<session id>`` before the ``;t`` when one session is excluded, ``;s=<socket id>``
when one socket is; see :mod:`turbocast.message`). ``t`` is the publisher's own
wall-clock time of the publish, in microseconds since the epoch (a retry keeps the
first attempt's); the history entry keeps it too (field ``t``). Many messages go in
one round trip too (:meth:`History.publish_many`: the same script for each,
pipelined). Every message gets the stream entry's id (``<ms>-<seq>``). On one server
the script picks it from a clock key shared by every channel of the prefix, so ids
follow publish order across channels too: a replay that merges several channels sorts
by id. On a Redis Cluster (no key spans shards) each channel's ids follow its shard's
clock. Trimming by count leaves at least ``maxlen`` messages (it drops whole stream
nodes), trimming by age none older than ``max_age``; a replay gives at most ``maxlen``. A
socket that connects or comes back with a position (the last id it has) gets what came
after it from the history, then the live messages, with nothing twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import redis
from redis.exceptions import NoScriptError

from .channels import DEFAULT_PREFIX, clock_key

logger = logging.getLogger("turbocast.history")

#: What a position is: a stream id as text, ``"0-0"`` meaning "from the start".
START = "0-0"

# KEYS[1] history key, KEYS[2] clock key (the last id handed out, any channel; none
# on a Redis Cluster). ARGV: payload, max length, max age (ms), pub/sub channel, the
# publish's token, "" on a first attempt or, on a retry, the ms from which the first
# attempt's entry would be found, the session id it excludes ("" for none), the
# socket id it excludes ("" for none), the publisher's time in µs since the epoch
# ("" for none), and "S" for sharded pub/sub (SPUBLISH, on a cluster) or "" for
# PUBLISH. Returns {id, receivers} or, when a retry finds that the first attempt
# landed, {its id, the channel's subscribers now, 1}.
# With a clock key, the id is max(now, clock) with the next sequence. When the
# stream's top is already above it (the clock key was lost: evicted, deleted), XADD
# refuses it; XADD '*' then takes the next id above the top, and the clock moves up
# to that. Without one, XADD '*' orders the channel's ids by itself, and the new id's
# ms is the time (no TIME call).
# What it costs Redis is mostly the script itself: running one at all, then each
# redis.call(), more than the commands' own work (bench/script_cost.py, the figures in
# bench/NOTES.md); hence no call more than needed (no TIME on a cluster). Trimming by count is
# approximate ('~': Redis drops only whole stream nodes, so a history keeps at least
# maxlen entries and less than one node more), which spares a channel at its maxlen the
# rewrite of a node on every publish; by age it is exact, as max_age promises. The retry
# lookup reads to the top: a history may hold more than maxlen entries.
_PUBLISH = """
local sharded = ARGV[10] == 'S'
if ARGV[6] ~= '' then
  local entries = redis.call('XRANGE', KEYS[1], ARGV[6], '+')
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'p' and fields[i + 1] == ARGV[5] then
        local numsub = sharded and 'SHARDNUMSUB' or 'NUMSUB'
        return {entry[1], redis.call('PUBSUB', numsub, ARGV[4])[2], 1}
      end
    end
  end
end
local id, now = '*', nil
if KEYS[2] then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ms, seq = now, 0
  local last = redis.call('GET', KEYS[2])
  if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    if last_ms and tonumber(last_ms) >= now then
      ms, seq = tonumber(last_ms), tonumber(last_seq) + 1
    end
  end
  id = string.format('%d-%d', ms, seq)
end
local exclude = ARGV[7] or ''
local exclude_socket = ARGV[8] or ''
local published = ARGV[9] or ''
local fields = {'d', ARGV[1], 'p', ARGV[5]}
if exclude ~= '' then
  table.insert(fields, 'x')
  table.insert(fields, exclude)
end
if exclude_socket ~= '' then
  table.insert(fields, 's')
  table.insert(fields, exclude_socket)
end
if published ~= '' then
  table.insert(fields, 't')
  table.insert(fields, published)
end
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, unpack(fields))
if type(added) == 'table' and added.err then
  added = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
end
id = added
if KEYS[2] then
  redis.call('SET', KEYS[2], id)
else
  now = tonumber(string.match(id, '^%d+'))
end
local oldest = now - tonumber(ARGV[3])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', oldest))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local head = id
if exclude ~= '' then
  head = head .. ';x=' .. exclude
end
if exclude_socket ~= '' then
  head = head .. ';s=' .. exclude_socket
end
if published ~= '' then
  head = head .. ';t=' .. published
end
local receivers = redis.call(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[4], head .. ' ' .. ARGV[1])
return {id, receivers}
"""


#: A history entry as read back: its id, its HTML, the session and the socket it excludes
#: (each ``None`` when it excludes none), and the publisher's time of the publish in
#: microseconds since the epoch, as ASCII digits (``None`` for an entry without one; see
#: :func:`turbocast.message.published_seconds`).
Entry = tuple[str, bytes, bytes | None, bytes | None, bytes | None]


class Publication(NamedTuple):
    """One message of :meth:`History.publish_many`."""

    #: The channel's history key.
    key: str
    #: The pub/sub channel.
    channel: str
    #: The message (UTF-8 HTML).
    payload: bytes
    #: This publish's own random id (a retry passes the same one).
    token: bytes
    #: A session id whose sockets must not get it, or ``None``.
    exclude: str | None = None
    #: A socket id that must not get it, or ``None``.
    exclude_socket: str | None = None
    #: The publisher's time of the publish (µs since the epoch), or ``None``: the one
    #: :meth:`History.publish_many` is given (a retry passes the first attempt's).
    published_us: int | None = None


def _now_us() -> int:
    """This host's wall-clock time (``time.time()``), in whole microseconds since the epoch."""
    return int(time.time() * 1_000_000)


def parse_id(value: bytes | str) -> tuple[int, int]:
    """Turn a stream id (``b"1700000000000-3"``) into a comparable ``(ms, seq)``.

    :param value: the id, as Redis returns it or as text.
    :raises ValueError: when it is not a stream id.
    """
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(key: tuple[int, int]) -> str:
    """The text of a parsed id.

    :param key: ``(ms, seq)``.
    """
    return f"{key[0]}-{key[1]}"


class History:
    """Reads and writes channel histories.

    :param client: the Redis client.
    :param maxlen: how many messages each channel keeps for replay: trimming by count
        leaves at least these (trimming by age may leave fewer), and less than one stream
        node more (Redis trims whole nodes; a node holds at most
        ``stream-node-max-entries`` messages, 100 by default, and
        ``stream-node-max-bytes``, 4 KB). A reader that missed more than ``maxlen``
        messages gets a gap, however many the history still holds.
    :param max_age: how many seconds a message is kept; also the key's time to live.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``); names the clock key
        that orders publishes across its channels.
    :param sharded: Redis is a Redis Cluster (``client`` a
        :class:`~redis.cluster.RedisCluster`): messages go out with ``SPUBLISH``; there is
        no clock key, so each channel's history orders its own ids (ids of channels on
        different shards follow those shards' clocks); reading several histories is no
        longer one snapshot (see :meth:`since_many`).
    """

    def __init__(
        self,
        client: redis.Redis,
        maxlen: int = 1000,
        max_age: float = 3600.0,
        *,
        prefix: str = DEFAULT_PREFIX,
        sharded: bool = False,
    ) -> None:
        if maxlen < 1 or max_age <= 0:
            raise ValueError("history needs maxlen >= 1 and max_age > 0")
        self.client = client
        self.maxlen = maxlen
        self.max_age_ms = int(max_age * 1000)
        self.sharded = sharded
        self.clock_key = clock_key(prefix)
        self._script = client.register_script(_PUBLISH)
        # Publishing is every push's hot path: it runs the script on connections of
        # its own, made by the client's pool (so every URL option applies), without
        # redis-py's per-command layers, which cost more than the round trip here.
        # A cluster client (no pool: one per node) goes through the script object,
        # which follows the cluster's redirections.
        self._pool: Any = None if sharded else getattr(client, "connection_pool", None)
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def publish(
        self,
        key: str,
        channel: str,
        payload: bytes,
        *,
        token: bytes | None = None,
        retry_from_ms: int | None = None,
        exclude: str | None = None,
        exclude_socket: str | None = None,
        published_us: int | None = None,
    ) -> tuple[str, int]:
        """Append to the history and publish, in one round trip.

        :param key: the channel's history key.
        :param channel: the pub/sub channel.
        :param payload: the message (UTF-8 HTML).
        :param token: this publish's own id, stored with the entry (random when not
            given); a retry passes the first attempt's.
        :param retry_from_ms: only on a retry: a time (ms since the epoch) before the
            first attempt began. An entry since then carrying ``token`` means the first
            attempt landed and only its reply was lost: nothing is appended or published
            again, and its id is returned with the channel's current number of
            subscribers (``PUBSUB NUMSUB``), since how many got it then is unknown.
        :param exclude: a session id whose sockets must not get it (checked by the caller).
        :param exclude_socket: a socket id that must not get it (checked by the caller).
        :param published_us: the publisher's wall-clock time of the publish, in
            microseconds since the epoch, stored with the entry and sent in the head
            (``;t=``); now when not given. A retry passes the first attempt's.
        :returns: the message's id and how many subscribers (web processes) got it.
        """
        if token is None:
            if retry_from_ms is not None:
                raise ValueError("a retry needs the first attempt's token")
            token = os.urandom(16)
        if published_us is None:
            published_us = _now_us()
        keys, args = self._call(
            key, channel, payload, token, retry_from_ms, exclude, exclude_socket, published_us
        )
        if self._pool is None:
            result = self._script(keys=list(keys), args=list(args))
        else:
            result = self._run_script(keys, args)
        if len(result) > 2:
            logger.info(
                "the retried publish had landed; not sent again",
                extra={"turbo_channel": channel, "turbo_id": _text(result[0])},
            )
        return _text(result[0]), int(result[1])

    def publish_many(
        self,
        publications: Sequence[Publication],
        *,
        retry_from_ms: int | None = None,
        published_us: int | None = None,
    ) -> list[tuple[str, int]]:
        """Append and publish many messages, in order, in one round trip.

        The script :meth:`publish` runs, once per message, pipelined without a
        transaction: each message gets its own id and history entry, in the order given,
        and another publisher's messages may fall between them. Should the connection
        break, the messages Redis ran are a prefix of the list; a retry (same tokens,
        ``retry_from_ms``) finds those and sends only the rest.

        :param publications: what to publish, each with its own token.
        :param retry_from_ms: only on a retry, as in :meth:`publish`.
        :param published_us: the publisher's time of the publish (µs since the epoch), for
            each message that does not carry its own (:attr:`Publication.published_us`);
            now when not given. A retry passes the first attempt's.
        :returns: each message's id and how many subscribers got it, in order.
        :raises redis.ResponseError: when Redis refused one of them (say, a key of the
            wrong type), after every reply was read: the others were published.
        """
        if published_us is None:
            published_us = _now_us()
        calls = [
            self._call(
                p.key,
                p.channel,
                p.payload,
                p.token,
                retry_from_ms,
                p.exclude,
                p.exclude_socket,
                published_us if p.published_us is None else p.published_us,
            )
            for p in publications
        ]
        if not calls:
            return []
        if self.sharded:
            replies: list[Any] = self._run_scripts_by_shard(calls)
        elif self._pool is None:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                self._script(keys=list(keys), args=list(args), client=pipe)
            replies = pipe.execute(raise_on_error=False)
        else:
            replies = self._run_scripts(calls)
        found = sum(1 for reply in replies if not isinstance(reply, Exception) and len(reply) > 2)
        if found:
            logger.info(
                "retried publishes had landed; not sent again",
                extra={"turbo_found": found, "turbo_messages": len(calls)},
            )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [(_text(reply[0]), int(reply[1])) for reply in replies]

    def _call(
        self,
        key: str,
        channel: str,
        payload: bytes,
        token: bytes,
        retry_from_ms: int | None,
        exclude: str | None,
        exclude_socket: str | None,
        published_us: int,
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        if published_us < 0:
            raise ValueError("published_us is a time since the epoch: not below zero")
        since = "" if retry_from_ms is None else str(max(0, retry_from_ms))
        keys = (key,) if self.sharded else (key, self.clock_key)
        args = (payload, self.maxlen, self.max_age_ms, channel, token, since)
        mode = "S" if self.sharded else ""
        return keys, (*args, exclude or "", exclude_socket or "", published_us, mode)

    def _run_scripts_by_shard(
        self, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[Any]:
        # A cluster's pipeline refuses scripts: the scripts are pipelined on each shard's
        # own connection instead (one round trip a shard), in the order given (a channel's
        # messages stay in order: one channel, one slot, one shard). A message whose slot
        # moved meanwhile (MOVED, ASK: the script did not run) goes again through the
        # cluster client, which follows the redirection.
        cluster: Any = self.client
        shards: dict[str, tuple[Any, list[int]]] = {}
        for index, (keys, _) in enumerate(calls):
            node = cluster.get_node_from_key(keys[0])
            shards.setdefault(node.name, (node, []))[1].append(index)
        replies: list[Any] = [None] * len(calls)
        for node, indexes in shards.values():
            pool = cluster.get_redis_connection(node).connection_pool
            conn = pool.get_connection()
            try:
                shard_replies = self._evalsha_all(conn, [calls[i] for i in indexes])
            except BaseException:
                conn.disconnect()  # (a reply may still be on its way)
                raise
            finally:
                pool.release(conn)
            for index, reply in zip(indexes, shard_replies, strict=True):
                replies[index] = reply
        for index, reply in enumerate(replies):
            if isinstance(reply, (redis.exceptions.MovedError, redis.exceptions.AskError)):
                keys, args = calls[index]
                try:
                    replies[index] = self._script(keys=list(keys), args=list(args))
                except redis.ResponseError as exc:
                    replies[index] = exc
        return replies

    def _run_scripts(self, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]) -> list[Any]:
        # Every command is written before any reply is read: one round trip. An error
        # reply (a ResponseError) is one value among the replies; reading them all keeps
        # the connection in step.
        conn = self._connection()
        try:
            replies = self._evalsha_all(conn, calls)
        except BaseException as exc:
            conn.disconnect()
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
                self.close()
            self._idle.append(conn)
            raise
        self._idle.append(conn)
        return replies

    def _evalsha_all(
        self, conn: Any, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[Any]:
        # The script by its digest, pipelined; where Redis does not know it (restarted, or
        # its scripts flushed: those ran nothing), its body, which Redis then keeps.
        sha = self._script.sha
        replies = _pipelined(conn, [("EVALSHA", sha, len(k), *k, *a) for k, a in calls])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            bodies = [("EVAL", _PUBLISH, len(calls[i][0]), *calls[i][0], *calls[i][1])
                      for i in missing]  # fmt: skip
            for i, reply in zip(missing, _pipelined(conn, bodies), strict=True):
                replies[i] = reply
        return replies

    def _connection(self) -> Any:
        """An idle publishing connection, or a new one; connected."""
        if self._pid != os.getpid():
            # A forked child (a Celery prefork worker) must not share its parent's sockets.
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()  # atomic: no lock, safe across threads
        except IndexError:
            conn = self._pool.make_connection()
        # Not left to the first send: that connects to the host and port the connection
        # holds, while a Sentinel's connection asks the Sentinels where the primary is only
        # in connect() (else: localhost:6379, or a primary since demoted or dead). It does
        # nothing on a connection that is connected.
        try:
            conn.connect()
        except BaseException:
            self._idle.append(conn)  # (kept: the pool counts every connection it made)
            raise
        return conn

    def _run_script(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        conn = self._connection()
        try:
            try:
                conn.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
                result = conn.read_response()
            except NoScriptError:
                # Redis restarted (or flushed its scripts): send the body; it is cached again.
                conn.send_command("EVAL", _PUBLISH, len(keys), *keys, *args)
                result = conn.read_response()
        except redis.ResponseError:
            self._idle.append(conn)  # the reply was read whole: the connection is fine
            raise
        except BaseException as exc:
            # A reply may still be on its way: this connection cannot be reused as it is.
            conn.disconnect()
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
                # Redis went away (a restart, a failover): the idle connections are
                # dead too; drop them, so later publishes do not each stumble on one.
                self.close()
            self._idle.append(conn)  # (it reconnects when next used)
            raise
        self._idle.append(conn)
        return result

    def close(self) -> None:
        """Close the connections publishing uses."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()
        # Kept, closed, to connect again when next used: the client's pool counts every
        # connection it made against its max_connections (100 by default), and these are
        # never handed back to it.
        self._idle.extend(idle)

    def positions(self, keys: Sequence[str]) -> list[str]:
        """The newest id of each history (``"0-0"`` for an empty one), in one round trip.

        :param keys: history keys.
        """
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.xrevrange(key, count=1)
        return [_text(entries[0][0]) if entries else START for entries in pipe.execute()]

    def since(self, key: str, position: str) -> tuple[list[Entry], bool]:
        """What a history holds after ``position``, and whether some of it may be gone.

        :param key: the channel's history key.
        :param position: the last id the reader has (``"0-0"``: it has nothing).
        :returns: ``(entries, gap)``: ``[(id, payload, excluded session or None,
            excluded socket or None, publisher's time in µs or None), ...]`` (see
            :data:`Entry`) oldest first. ``gap`` is
            true when messages published after ``position`` may be missing, so the
            reader cannot be brought up to date message by message: the reader's own
            last entry is gone (trimmed, expired, or Redis lost the history), or, for a
            reader at ``"0-0"`` (a page rendered while its channel was empty), anything
            was ever trimmed from this history; or more than ``maxlen`` messages came
            after ``position`` (then ``entries`` are the newest ``maxlen``).
        """
        return self.since_many([(key, position)])[0]

    def since_many(self, reads: Sequence[tuple[str, str]]) -> list[tuple[list[Entry], bool]]:
        """:meth:`since` for several histories, read as one snapshot in one round trip.

        One transaction (MULTI/EXEC): no publish falls between the reads of two
        histories, so a replay merged from them is what a reader would have seen
        live up to one moment, and what comes live afterwards is all newer. On a Redis
        Cluster (``sharded``) the histories live on several shards and are read without
        a transaction: a message published meanwhile may come in one channel's replay
        and not another's, which only changes the order across those channels; each
        channel's own stays whole and in order (the reader's cursor drops what replay
        and live both bring).

        :param reads: ``(key, position)`` pairs.
        :returns: ``(entries, gap)`` for each pair, in order.
        """
        if not reads:
            return []
        pipe = self.client.pipeline(transaction=not self.sharded)
        for key, position in reads:
            after = format_id(parse_id(position))
            # XINFO comes last: if it says nothing was deleted, nothing had been when
            # the ranges were read either, so they are whole. The newest first: a
            # history may hold more than maxlen (trimming is by whole nodes), and a
            # reader that missed more than maxlen gets a gap carrying the newest id.
            pipe.xrevrange(key, max="+", min=f"({after}", count=self.maxlen + 1)
            pipe.xrange(key, min=after, max=after)
            pipe.xinfo_stream(key)
        replies = pipe.execute(raise_on_error=False)
        results = []
        for index, (_, position) in enumerate(reads):
            found, own, info = replies[3 * index : 3 * index + 3]
            results.append(_read(format_id(parse_id(position)), found, own, info, self.maxlen))
        return results


def _pipelined(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Write every command, then read every reply (an error reply as its exception)."""
    conn.send_packed_command(conn.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def _read(after: str, found: Any, own: Any, info: Any, maxlen: int) -> tuple[list[Entry], bool]:
    """One history's entries after ``after`` and its gap, from the three replies read.

    ``found`` is newest first, at most ``maxlen + 1`` entries; ``entries`` oldest first.
    """
    for reply in (found, own):
        if isinstance(reply, Exception):
            raise reply
    if isinstance(info, Exception):
        if "no such key" not in str(info).lower():
            raise info
        # No history at all: lost (expired, or Redis lost its data) unless the
        # reader had nothing, in which case nothing was ever there for it.
        return [], after != START
    # More than maxlen after the reader is a gap, however many more the history holds
    # (that depends on its stream nodes), with the newest maxlen as its entries.
    over = len(found) > maxlen
    entries = [
        (_text(i), f[b"d"], f.get(b"x"), f.get(b"s"), f.get(b"t"))
        for i, f in reversed(found[:maxlen])
    ]
    return entries, over or _gap(parse_id(after), bool(own), info)


def _gap(position: tuple[int, int], own: bool, info: Any) -> bool:
    """Whether a reader at ``position`` may have missed entries of a stream that exists.

    :param position: the reader's last id (``(0, 0)``: it has nothing).
    :param own: whether the entry at ``position`` is still in the stream.
    :param info: the stream's ``XINFO STREAM``.
    """
    # Redis 7 counts every entry ever added, and remembers the newest one XDEL took;
    # trimming (by MAXLEN or MINID) shows only in the count.
    added = _field(info, "entries-added")
    if position == (0, 0):
        # Everything in this stream came after the reader's page: was any of it trimmed?
        return added is not None and int(added) > int(_field(info, "length") or 0)
    # The reader's entry is gone: trimmed (and perhaps what followed it; a history
    # does not say which ids it trimmed), or the stream expired and began afresh.
    deleted = _field(info, "max-deleted-entry-id")
    return not own or (deleted is not None and parse_id(deleted) > position)


def _field(info: Any, name: str) -> Any:
    """A field of ``XINFO STREAM`` as redis-py parses it (``None`` before Redis 7)."""
    return info.get(name, info.get(name.encode()))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
