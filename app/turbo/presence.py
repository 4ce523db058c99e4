"""Presence: which signed-in users have a page of a named stream open, across tabs and hosts.

A page asks for it with ``turbo_stream_source(streams=[name], presence=[name])``
(the name signed like the stream's). Each of its sockets whose user is signed in
is then one **connection** of that user on the stream, kept in Redis; a user is a
**member** while any of their connections is, however many tabs, sessions and web
processes they have.

In Redis, per stream, two keys in one hash slot (``{<name>}``):

``<prefix>:presence:{<name>}:sockets``
    A sorted set: one entry per connection, ``"<connection id> <user>"``, scored
    with the time (ms, Redis's own clock, so the web hosts' clocks need not agree)
    until which it counts. A live socket's entry is renewed by
    its web process's heartbeat (every ``TURBO_PRESENCE_TTL`` / 3 s) to
    ``TURBO_PRESENCE_TTL`` ahead; a closed socket's is set to ``TURBO_PRESENCE_GRACE``
    ahead, so that a reload or a Turbo navigation, whose new socket arrives meanwhile,
    is neither a leave nor a join.
``<prefix>:presence:{<name>}:users``
    A hash: each member's number of entries there.

Scripts keep the two in step, atomically: a **join** is the entry that takes a
user's count from 0 to 1; a **leave** is the reaping of the entry that takes it back
to 0. Every web process with presence sockets on a stream reaps it every
:data:`REAP_SECONDS`; the one whose script removed the entry publishes the leave,
so each join and each leave is pushed once. A web process killed with SIGKILL
stops renewing its entries: they are reaped, and their users leave, within
``TURBO_PRESENCE_TTL`` + :data:`REAP_SECONDS` (by any other process with presence
sockets on that stream). Both keys expire when nobody renews them, so a stream
nobody visits any more leaves nothing behind.

Joins and leaves are pushed to the stream as Turbo Streams rendered by the app
(:meth:`turbocast.Turbo.presence_renderer`); by default an ``<li>`` appended to, or
removed from, the element with id :func:`presence_target`. Reading who is there
(:meth:`Presence.members`, :meth:`Presence.count`) works from any process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.cluster import RedisCluster

from .channels import DEFAULT_PREFIX, check_stream_name

logger = logging.getLogger("turbocast.presence")

#: How often each web process reaps the connections of its presence streams (seconds).
REAP_SECONDS = 0.5

# Every time is Redis's own (TIME), never a web host's: the hosts' clocks may disagree,
# and an entry's expiry must mean the same to every process that reads or reaps it.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Removes the expired entries of KEYS[1] (sockets), keeping KEYS[2] (users) in step;
# ``left`` gets the users whose last entry that was (the leaves).
_REAP_BODY = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, entry in ipairs(expired) do
  if redis.call('ZREM', KEYS[1], entry) == 1 then
    local user = string.sub(entry, string.find(entry, ' ', 1, true) + 1)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      left[#left + 1] = user
    end
  end
end
"""

# KEYS[1] sockets, KEYS[2] users. ARGV: entry, user, ttl (ms), keys' ttl (ms).
# Reaps first (an entry of a process killed meanwhile must not hide a join), then adds.
# Returns {joined (1 when this entry made the user a member), the users who left}.
_JOIN = (
    _NOW
    + "local left = {}\n"
    + _REAP_BODY
    + """
local joined = 0
if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then joined = 1 end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {joined, left}
"""
)

# KEYS[1] sockets. ARGV: entry, grace (ms). A closed socket's entry counts that much longer
# (unless it was reaped already).
_LINGER = (
    _NOW
    + """
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
"""
)

# KEYS[1] sockets, KEYS[2] users. ARGV: ttl (ms), keys' ttl (ms), then entry, user pairs.
# Renews the entries of live sockets; one that was reaped meanwhile (this process was
# too slow to renew it) is added again. Returns the users that this made members again.
_RENEW = (
    _NOW
    + """
local joined = {}
local expiry = now + tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], expiry, ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1) == 1 then
      joined[#joined + 1] = ARGV[i + 1]
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return joined
"""
)

# KEYS[1] sockets, KEYS[2] users. Returns the users who left.
_REAP = _NOW + "local left = {}\n" + _REAP_BODY + "return left\n"

# KEYS[1] sockets. The entries that count now (their time is not up), unreaped ones aside.
_CURRENT = _NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')\n"


def presence_keys(name: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """The Redis keys of a stream's presence: its connections and its members' counts.

    :param name: the stream's name.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    """
    base = f"{prefix}:presence:{{{check_stream_name(name)}}}"
    return f"{base}:sockets", f"{base}:users"


def presence_target(name: str) -> str:
    """The id of the element the default join and leave streams append to and remove from.

    ``presence_target("board:1")`` is ``"presence_board_1"``; render
    ``<ul id="{{ presence_target('board:1') }}">`` on the page.

    :param name: the stream's name.
    """
    return "presence_" + "".join(c if c.isalnum() else "_" for c in check_stream_name(name))


def member_dom_id(name: str, user: str) -> str:
    """The id of one member's element in the default rendering (``presence_board_1_7``).

    :param name: the stream's name.
    :param user: the member's user id (as text).
    """
    return presence_target(name) + "_" + "".join(c if c.isalnum() else "_" for c in user)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Presence:
    """Reads and writes presence in Redis; from any process (a view, a worker, a script).

    :param client: the Redis client.
    :param prefix: the channel namespace (``TURBO_CHANNEL_PREFIX``).
    :param ttl: seconds a live socket's entry counts without a renewal
        (``TURBO_PRESENCE_TTL``).
    :param grace: seconds a closed socket's entry still counts (``TURBO_PRESENCE_GRACE``).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = 15.0,
        grace: float = 3.0,
    ) -> None:
        if ttl <= 0 or grace < 0:
            raise ValueError("presence needs ttl > 0 and grace >= 0")
        self.client = client
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self.grace_ms = int(grace * 1000)
        # The keys outlive every entry they hold.
        self.keys_ttl_ms = 2 * (self.ttl_ms + self.grace_ms)
        self._join = client.register_script(_JOIN)
        self._linger = client.register_script(_LINGER)
        self._renew = client.register_script(_RENEW)
        self._reap = client.register_script(_REAP)
        self._current = client.register_script(_CURRENT)

    @classmethod
    def from_config(cls, config: Any, client: redis.Redis | None = None) -> Presence:
        """Presence with an app's settings (``TURBO_*``), for a worker or a script.

        :param config: a Flask app's config, or any mapping of settings.
        :param client: a Redis client; by default one for ``TURBO_REDIS_URL``/``REDIS_URL``.
        """
        from .settings import redis_url, setting
        from .topology import parse

        if client is None:
            timeout = float(setting(config, "TURBO_REDIS_TIMEOUT"))
            client = parse(redis_url(config)).client(
                socket_connect_timeout=timeout, socket_timeout=timeout
            )
        return cls(
            client,
            prefix=str(setting(config, "TURBO_CHANNEL_PREFIX")),
            ttl=float(setting(config, "TURBO_PRESENCE_TTL")),
            grace=float(setting(config, "TURBO_PRESENCE_GRACE")),
        )

    # -- reading -------------------------------------------------------------------------

    def members(self, name: str) -> list[str]:
        """The users on a stream now (their ids as text, sorted), each once.

        Entries whose time is up count no more, even before a web process reaps them.

        :param name: the stream's name.
        """
        return sorted({entry.partition(" ")[2] for entry in self._entries(name)})

    def count(self, name: str) -> int:
        """How many users are on a stream now.

        :param name: the stream's name.
        """
        return len(self.members(name))

    def connections(self, name: str) -> int:
        """How many sockets count on a stream now (closed ones in their grace period too).

        :param name: the stream's name.
        """
        return len(self._entries(name))

    def _entries(self, name: str) -> list[str]:
        sockets, _ = presence_keys(name, self.prefix)
        return [_text(entry) for entry in self._current(keys=[sockets])]

    # -- writing (web processes) ------------------------------------------------------------

    def join(self, name: str, user: str, connection: str) -> tuple[bool, list[str]]:
        """Count one socket of ``user`` on a stream, after reaping the stream's expired entries.

        :param name: the stream's name.
        :param user: the user's id as text.
        :param connection: the socket's own connection id (a new one per connection).
        :returns: whether that made the user a member (a join), and the users who left
            (reaped here).
        """
        keys = presence_keys(name, self.prefix)
        args: list[str | int] = [f"{connection} {user}", user, self.ttl_ms, self.keys_ttl_ms]
        joined, left = self._join(keys=list(keys), args=args)
        return bool(joined), [_text(u) for u in left]

    def linger(self, name: str, user: str, connection: str) -> None:
        """A socket closed: its entry counts for the grace period more, then is reaped.

        :param name: the stream's name.
        :param user: the user's id as text.
        :param connection: the socket's connection id.
        """
        sockets, _ = presence_keys(name, self.prefix)
        self._linger(keys=[sockets], args=[f"{connection} {user}", self.grace_ms])

    def renew(self, held: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
        """Renew the entries of live sockets, in one round trip.

        :param held: stream name -> ``(user, connection)`` of each live socket on it.
        :returns: stream name -> users that this made members again (their entries had
            been reaped: this process was too slow to renew them).
        """
        names = list(held)
        if not names:
            return {}
        calls: list[tuple[list[str], list[Any]]] = []
        for name in names:
            args: list[Any] = [self.ttl_ms, self.keys_ttl_ms]
            for user, connection in held[name]:
                args += [f"{connection} {user}", user]
            calls.append((list(presence_keys(name, self.prefix)), args))
        replies = self._run_all(self._renew, calls)
        return {n: [_text(u) for u in r] for n, r in zip(names, replies, strict=True) if r}

    def reap(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Remove the entries whose time is up, in one round trip.

        :param names: the streams to reap.
        :returns: stream name -> users who left (their last entry was removed here).
        """
        names = list(names)
        if not names:
            return {}
        calls: list[tuple[list[str], list[Any]]] = [
            (list(presence_keys(name, self.prefix)), []) for name in names
        ]
        replies = self._run_all(self._reap, calls)
        return {n: [_text(u) for u in r] for n, r in zip(names, replies, strict=True) if r}

    def _run_all(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        # One round trip; a Redis Cluster's pipeline refuses scripts, so there one each
        # (every stream's keys share a hash slot; different streams may not).
        if isinstance(self.client, RedisCluster):
            return [script(keys=keys, args=args) for keys, args in calls]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return list(pipe.execute())


#: Called with (stream name, user, joined) for each join (``True``) and leave (``False``).
Announce = Callable[[str, str, bool], None]


class PresenceKeeper:
    """One web process's presence: its sockets' entries, their renewal and the reaping.

    Started with the process's first presence socket, like the relay. Its thread
    renews this process's entries every ``ttl / 3`` seconds and reaps every
    :data:`REAP_SECONDS` the streams it holds sockets on (and, for the grace period
    and a little more, those whose last local socket closed), announcing each leave
    it reaped, and each re-join a renewal made.

    :param presence: the Redis side.
    :param announce: pushes a join or a leave to the stream's pages.
    """

    def __init__(self, presence: Presence, announce: Announce) -> None:
        self.presence = presence
        self._announce = announce
        self._lock = threading.Lock()
        # stream -> connection -> user (None: a page of nobody signed in, watching).
        self._held: dict[str, dict[str, str | None]] = {}
        # stream -> until when (monotonic) to reap it after its last local socket closed.
        self._after: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the thread once per process (a forked child starts its own)."""
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="turbo-presence", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (tests).

        :param timeout: how long to wait for it.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def arrive(self, names: Iterable[str], user: str | None) -> str:
        """A socket opened on presence streams: count it; announce what that changed.

        :param names: the presence streams it asked for.
        :param user: its user's id as text, or ``None`` (it watches, it is not a member).
        :returns: its connection id, for :meth:`depart`.
        :raises redis.RedisError: Redis did not take it.
        """
        connection = os.urandom(9).hex()
        names = list(dict.fromkeys(names))
        with self._lock:
            for name in names:
                self._held.setdefault(name, {})[connection] = user
        self.start()
        if user is None:
            return connection
        changes: list[tuple[str, str, bool]] = []
        try:
            for name in names:
                joined, left = self.presence.join(name, user, connection)
                changes += [(name, gone, False) for gone in left]
                if joined:
                    changes.append((name, user, True))
        except BaseException:
            self.depart(names, user, connection)  # what did get in lingers, then is reaped
            raise
        for name, member, joined in changes:
            self._announce(name, member, joined)
        return connection

    def depart(self, names: Iterable[str], user: str | None, connection: str) -> None:
        """A socket closed: its entries count for the grace period more, then are reaped.

        :param names: what :meth:`arrive` was given.
        :param user: the same user.
        :param connection: what :meth:`arrive` returned.
        """
        names = list(dict.fromkeys(names))
        until = time.monotonic() + self.presence.grace_ms / 1000 + 4 * REAP_SECONDS
        with self._lock:
            for name in names:
                held = self._held.get(name)
                if held is not None:
                    held.pop(connection, None)
                    if not held:
                        del self._held[name]
                        # This process reaps (and announces) the leave it leads to.
                        self._after[name] = until
        if user is None:
            return
        for name in names:
            try:
                self.presence.linger(name, user, connection)
            except redis.RedisError:
                # Not lost: unrenewed, the entry is reaped after the TTL instead.
                logger.warning("presence departure not recorded", exc_info=True)

    def streams(self) -> list[str]:
        """The presence streams this process reaps now."""
        now = time.monotonic()
        with self._lock:
            for name in [n for n, until in self._after.items() if until < now]:
                del self._after[name]
            return list(self._held.keys() | self._after.keys())

    def _live(self) -> dict[str, list[tuple[str, str]]]:
        with self._lock:
            live = {
                name: [(user, conn) for conn, user in held.items() if user is not None]
                for name, held in self._held.items()
            }
        return {name: pairs for name, pairs in live.items() if pairs}

    def _linger_departed(self, renewed: dict[str, list[tuple[str, str]]]) -> None:
        # A socket that closed while its entry was being renewed: the renewal may have
        # come after its departure's linger and undone it; linger it again.
        with self._lock:
            gone = [
                (name, user, conn)
                for name, pairs in renewed.items()
                for user, conn in pairs
                if conn not in self._held.get(name, {})
            ]
        for name, user, conn in gone:
            self.presence.linger(name, user, conn)

    def _run(self) -> None:
        renew_every = self.presence.ttl_ms / 3000
        last_renewal = time.monotonic()
        while not self._stop.wait(REAP_SECONDS):
            try:
                if time.monotonic() - last_renewal >= renew_every:
                    last_renewal = time.monotonic()
                    live = self._live()
                    for name, users in self.presence.renew(live).items():
                        for user in users:
                            self._announce(name, user, True)
                    self._linger_departed(live)
                for name, users in self.presence.reap(self.streams()).items():
                    for user in users:
                        self._announce(name, user, False)
            except Exception:  # noqa: BLE001 - the thread must go on; Redis may be back soon
                logger.warning("presence renewal or reaping failed", exc_info=True)
