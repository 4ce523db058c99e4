"""Each channel's recent messages, kept in a Redis Stream, so nothing Redis accepted is lost.

Publishing appends to the channel's history and publishes in one round trip (a
Lua script: XADD, trim by count and age, PUBLISH ``"<id> <html>"``). Every
message gets the stream entry's id (``<ms>-<seq>``), increasing per channel. A
socket that connects or comes back with a position (the last id it has) gets
what came after it from the history, then the live messages, with nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

#: What a position is: a stream id as text, ``"0-0"`` meaning "from the start".
START = "0-0"

# KEYS[1] history key; ARGV: payload, max length, max age (ms), pub/sub channel.
_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'd', ARGV[1])
local now = redis.call('TIME')
local oldest = (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) - tonumber(ARGV[3])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', tostring(oldest))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local receivers = redis.call('PUBLISH', ARGV[4], id .. ' ' .. ARGV[1])
return {id, receivers}
"""


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
    :param maxlen: how many messages each channel keeps at most.
    :param max_age: how many seconds a message is kept; also the key's time to live.
    """

    def __init__(self, client: redis.Redis, maxlen: int = 1000, max_age: float = 3600.0) -> None:
        if maxlen < 1 or max_age <= 0:
            raise ValueError("history needs maxlen >= 1 and max_age > 0")
        self.client = client
        self.maxlen = maxlen
        self.max_age_ms = int(max_age * 1000)
        self._script = client.register_script(_PUBLISH)
        # Publishing is every push's hot path: it runs the script on connections of
        # its own, made by the client's pool (so every URL option applies), without
        # redis-py's per-command layers, which cost more than the round trip here.
        # A client without a pool (a cluster client) goes through the script object.
        self._pool: Any = getattr(client, "connection_pool", None)
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def publish(self, key: str, channel: str, payload: bytes) -> tuple[str, int]:
        """Append to the history and publish, in one round trip.

        :param key: the channel's history key.
        :param channel: the pub/sub channel.
        :param payload: the message (UTF-8 HTML).
        :returns: the message's id and how many subscribers (web processes) got it.
        """
        args = (payload, self.maxlen, self.max_age_ms, channel)
        if self._pool is None:
            result = self._script(keys=[key], args=list(args))
        else:
            result = self._run_script(key, args)
        message_id, receivers = result
        return _text(message_id), int(receivers)

    def _run_script(self, key: str, args: tuple[Any, ...]) -> Any:
        if self._pid != os.getpid():
            # A forked child (a Celery prefork worker) must not share its parent's sockets.
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()  # atomic: no lock, safe across threads
        except IndexError:
            conn = self._pool.make_connection()
        try:
            try:
                conn.send_command("EVALSHA", self._script.sha, 1, key, *args)
                result = conn.read_response()
            except NoScriptError:
                # Redis restarted (or flushed its scripts): send the body; it is cached again.
                conn.send_command("EVAL", _PUBLISH, 1, key, *args)
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

    def positions(self, keys: Sequence[str]) -> list[str]:
        """The newest id of each history (``"0-0"`` for an empty one), in one round trip.

        :param keys: history keys.
        """
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.xrevrange(key, count=1)
        return [_text(entries[0][0]) if entries else START for entries in pipe.execute()]

    def since(self, key: str, position: str) -> tuple[list[tuple[str, bytes]], bool]:
        """What a history holds after ``position``, and whether some of it may be gone.

        :param key: the channel's history key.
        :param position: the last id the reader has (``"0-0"``: it has nothing).
        :returns: ``(entries, gap)``: ``[(id, payload), ...]`` oldest first. ``gap`` is
            true when the reader's own last message is no longer in the history
            (trimmed, expired, or Redis lost it): then messages after it may be gone
            too, and the reader cannot be brought up to date message by message.
        """
        after = format_id(parse_id(position))
        pipe = self.client.pipeline(transaction=False)
        pipe.xrange(key, min=f"({after}", max="+", count=self.maxlen + 1)
        pipe.xrange(key, min=after, max=after)
        found, own = pipe.execute()
        entries = [(_text(i), fields[b"d"]) for i, fields in found]
        return entries, after != START and not own


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
