"""What the history-and-publish script costs Redis, against a bare PUBLISH, and cheaper variants.

Every publish runs one Lua script (:mod:`turbocast.history`): the retry lookup (only on
a retry), ``TIME``, the clock key (``GET``, ``SET``; none on a Redis Cluster), ``XADD``
with trimming by count, ``XTRIM`` by age, ``PEXPIRE``, then ``PUBLISH`` (``SPUBLISH`` on
a cluster). This measures what each part costs Redis, and what variants of the script
would, against an embedded Redis 7 of its own (``redis-server`` on PATH, as the tests
find it), each row a ~300-byte message and the script's own arguments, pipelined 100 at
a time as ``Publisher.batch()`` sends them, into:

- ``spread``: :data:`CHANNELS` channels in turn, each holding :data:`PREFILL` messages
  before the first round (many channels with moderate history: trimming by count
  deletes nothing);
- ``hot``: one channel filled to its maxlen (:data:`MAXLEN`) before the first round, so
  that every publish trims.

Two figures per call, each also as a ratio to a bare ``PUBLISH`` of the same bytes (the
peer) measured in the same rounds: Redis's own time in the command (``INFO
commandstats``: ``usec`` over ``calls`` of ``EVALSHA``, or of the bare command), and the
redis-server process's CPU (every thread's ``/proc/<pid>/task/*/schedstat``) over the
row's pipelines, which adds reading the commands and writing the replies. A second
table splits each script's commandstats time into its commands' own (Redis counts a
script's commands too) and the rest: running the script, its Lua, and passing each
``redis.call()`` in and out. The shipped script is imported as it is; the one before
it (:data:`BEFORE`) and each variant are its text with a change made here, so measuring
never touches it. Rows marked "unsafe" drop a guarantee and only show what one step
costs. In clock mode, "before, MAXLEN ~" runs the same commands as "shipped", and
"shipped, MAXLEN =" as "before": how far each pair differs is the run's noise. Rows take turns, round by round (the machine's speed
drifts), for at most ``--rounds`` rounds (:data:`ROUNDS`) and, past the second,
``--seconds`` (:data:`SECONDS`), after one round that warms up; medians.

    python -m bench.script_cost [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import redis

from app.embedded_cluster import redis_version
from app.embedded_redis import EmbeddedRedis
from bench.common import cpu_seconds, message_html
from turbocast.history import _PUBLISH

CHANNELS = 300
PREFILL = 100
MAXLEN = 1000
MAX_AGE_MS = 3_600_000
PIPELINE = 100
PIPELINES_PER_ROUND = 9
ROUNDS = 25
SECONDS = 75.0
SCENARIOS = ("spread", "hot")
PEER = "bare PUBLISH (the peer)"
#: A script's commands, as ``INFO commandstats`` names them.
INNER = ("time", "get", "xadd", "set", "xtrim", "pexpire", "publish", "spublish")


def _swap(script: str, *changes: tuple[str, str]) -> str:
    """``script`` with each ``(old, new)`` made; raises if an ``old`` is not in it (a variant
    that no longer matches the script would measure the script itself, silently)."""
    for old, new in changes:
        if old not in script:
            raise ValueError(f"the script no longer holds {old!r}: update this variant")
        script = script.replace(old, new)
    return script


#: The script as shipped before this measurement (commit 2bec92c): the shipped one with
#: exact trimming by count, TIME on a cluster too, and a COUNT on the retry lookup. Its
#: SHA1 (Redis's digest of it) is :data:`BEFORE_SHA`.
BEFORE = _swap(
    _PUBLISH,
    ("'+')", "'+', 'COUNT', ARGV[2])"),
    ("'MAXLEN', '~', ", "'MAXLEN', "),
    ("else\n  now = tonumber(string.match(id, '^%d+'))\n", ""),
    (
        "local id, now = '*', nil\nif KEYS[2] then\n  local t = redis.call('TIME')\n"
        "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local id = '*'\nif KEYS[2] then\n",
    ),
)
BEFORE_SHA = "2c42e7ea5f40c0313b655f442546b6766f97636c"

_EXACT_COUNT = "'MAXLEN', ARGV[2]"
_EXACT_AGE = "'MINID', string.format"
_AGE_TRIM = "  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', oldest))\n"

#: Variants, each one change to the shipped script or to :data:`BEFORE` (``"~"``:
#: approximate trimming, which removes only whole stream nodes).
VARIANTS = {
    "shipped, MAXLEN =": _swap(_PUBLISH, ("'~', ", "")),
    "shipped, MINID ~": _swap(_PUBLISH, (_EXACT_AGE, "'MINID', '~', string.format")),
    "before, MAXLEN ~": _swap(BEFORE, (_EXACT_COUNT, "'MAXLEN', '~', ARGV[2]")),
    "before, MINID ~": _swap(BEFORE, (_EXACT_AGE, "'MINID', '~', string.format")),
    "before, MAXLEN ~, MINID ~": _swap(
        BEFORE,
        (_EXACT_COUNT, "'MAXLEN', '~', ARGV[2]"),
        (_EXACT_AGE, "'MINID', '~', string.format"),
    ),
    # Trimming by age in the XADD itself, by count in the XTRIM (an XADD takes one).
    "before, XADD MINID ~, XTRIM MAXLEN ~": _swap(
        BEFORE,
        (
            "local t = redis.call('TIME')",
            "local t = redis.call('TIME')\n"
            "local cut = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
            " - tonumber(ARGV[3])\n"
            "cut = string.format('%d', cut > 0 and cut or 0)",
        ),
        (_EXACT_COUNT, "'MINID', '~', cut"),
        (_AGE_TRIM, "  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2])\n"),
    ),
    "before, no XTRIM MINID (unsafe)": _swap(BEFORE, (_AGE_TRIM, "")),
    "before, no PEXPIRE (unsafe)": _swap(BEFORE, ("redis.call('PEXPIRE', KEYS[1], ARGV[3])\n", "")),
}

#: The script's floor: EVALSHA of the same arguments, running nothing, or only the PUBLISH.
EMPTY = "return 0"
PUBLISH_ONLY = "return redis.call('PUBLISH', ARGV[4], ARGV[1])"


@dataclass
class Row:
    """One thing measured: a bare command (``script`` None) or a script."""

    name: str
    script: str | None = None
    command: str = "PUBLISH"  # the bare command's name, when not a script
    cluster: bool = False  # the script as on a Redis Cluster: no clock key, SPUBLISH


def rows() -> list[Row]:
    """What is measured, the peer first."""
    return [
        Row(PEER),
        Row("bare XADD, no trimming", command="XADD"),
        Row("bare XADD MAXLEN =", command="XADD MAXLEN ="),
        Row("bare XADD MAXLEN ~", command="XADD MAXLEN ~"),
        Row("EVALSHA of nothing", EMPTY),
        Row("EVALSHA of PUBLISH only", PUBLISH_ONLY),
        Row("shipped", _PUBLISH),
        Row("shipped, cluster mode", _PUBLISH, cluster=True),
        Row("before (exact trims)", BEFORE),
        Row("before, cluster mode", BEFORE, cluster=True),
        *(Row(name, text) for name, text in VARIANTS.items()),
    ]


def _commands(
    row: Row, tag: int, sha: str | None, scenario: str, first: int, payload: bytes
) -> list[tuple[Any, ...]]:
    """The row's commands for one pipeline (channels ``first`` on); sent again each round."""
    commands: list[tuple[Any, ...]] = []
    for n in range(PIPELINE):
        i = first + n if scenario == "spread" else 0
        key = f"bench:h:{tag}:{scenario}:{i}"
        channel = f"bench:c:{scenario}:{i}"
        token = os.urandom(16)
        published = str(time.time_ns() // 1000)
        if row.script is None:
            if row.command == "PUBLISH":
                head = f"1700000000000-{n};t={published} ".encode()
                commands.append(("PUBLISH", channel, head + payload))
            else:
                trim = row.command.split()[1:]
                trim = [*trim, str(MAXLEN)] if trim else []
                fields = ("d", payload, "p", token, "t", published)
                commands.append(("XADD", key, *trim, "*", *fields))
            continue
        keys = (key,) if row.cluster else (key, "bench:clock")
        args = (payload, MAXLEN, MAX_AGE_MS, channel, token, "", "", "", published)
        commands.append(("EVALSHA", sha, len(keys), *keys, *args, "S" if row.cluster else ""))
    return commands


def _send(conn: redis.Connection, packed: list[bytes]) -> None:
    """One pipeline: every command written, then every reply read (an error raises)."""
    conn.send_packed_command(packed)
    for _ in range(PIPELINE):
        conn.read_response(disable_decoding=True)


def _stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """``{command: (calls, usec)}`` from ``INFO commandstats`` (a script's commands too)."""
    stats = client.info("commandstats")
    return {name[8:]: (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def _name(row: Row) -> str:
    return "evalsha" if row.script is not None else row.command.split()[0].lower()


@dataclass
class Sample:
    """One row's figures in one round, per call."""

    usec: float  # Redis's time in the command (commandstats)
    cpu: float  # the redis-server process's CPU, µs
    inner: dict[str, float]  # a script's commands: Redis's time in each, µs per script call


def measure(url: str, pid: int, rounds: int, seconds: float) -> tuple[dict[Any, Any], int]:
    """Each (row, scenario)'s samples, round by round, and how many rounds were measured."""
    client = redis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    conn = redis.Connection(host=kwargs["host"], port=kwargs["port"])
    payload = message_html(0).encode()
    jobs = []
    for tag, row in enumerate(rows()):
        sha = client.script_load(row.script) if row.script is not None else None
        for scenario in SCENARIOS:
            # Spread: CHANNELS channels, a pipeline for each PIPELINE of them, in turn.
            firsts = range(0, CHANNELS, PIPELINE) if scenario == "spread" else [0]
            packed = [
                conn.pack_commands(_commands(row, tag, sha, scenario, first, payload))
                for first in firsts
            ]
            jobs.append((row, scenario, packed))
    # Fill: each spread channel to PREFILL messages, each hot channel past its maxlen
    # (by the row's own commands, so each history is shaped as its script leaves it).
    for row, scenario, packed in jobs:
        if "XADD" not in (row.script or row.command):
            continue
        fills = PREFILL if scenario == "spread" else MAXLEN // PIPELINE + 3
        for _ in range(fills):
            for part in packed:
                _send(conn, part)
    samples: dict[Any, list[Sample]] = {(r.name, s): [] for r, s, _ in jobs}
    deadline = time.monotonic() + seconds
    done = 0
    order = random.Random(17)
    for round_ in range(rounds + 1):
        if round_ > 1 and time.monotonic() > deadline:
            break
        # A new order each round: a row's place in it (what ran just before, the
        # allocator's and Lua's garbage collector's state) would otherwise bias it.
        order.shuffle(jobs)
        for row, scenario, packed in jobs:
            before = _stats(client)
            cpu = cpu_seconds([pid])
            for n in range(PIPELINES_PER_ROUND):
                _send(conn, packed[n % len(packed)])
            cpu = cpu_seconds([pid]) - cpu
            after = _stats(client)
            if not round_:
                continue  # the first round warms up
            delta = {k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1])
                     for k, v in after.items() if k != "info"}  # fmt: skip
            calls, usec = delta[_name(row)]
            inner = {k: u / calls for k, (_, u) in delta.items() if k != _name(row) and u}
            samples[row.name, scenario].append(Sample(usec / calls, cpu / calls * 1e6, inner))
        done = round_
    conn.disconnect()
    client.close()
    return samples, done


def _median(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(sample, field) for sample in samples)


def report(samples: dict[Any, list[Sample]]) -> None:
    """The tables: every row against the peer, then where a script's time goes."""
    print("| per call | spread: commandstats | spread: Redis CPU | hot: commandstats "
          "| hot: Redis CPU |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows():
        cells = []
        for scenario in SCENARIOS:
            for field in ("usec", "cpu"):
                got = _median(samples[row.name, scenario], field)
                cells.append(f"{got / _median(samples[PEER, scenario], field):.1f}× ({got:.2f})")
        print(f"| {row.name} | " + " | ".join(cells) + " |")
    print()
    print("Inside the scripts, µs per call (commandstats medians; the rest is the script itself):")
    print("| script | scenario | " + " | ".join(INNER) + " | all commands | the rest |")
    print("|---|---|" + "---|" * (len(INNER) + 2))
    for row in rows():
        if row.script is None or "XADD" not in row.script:
            continue
        for scenario in SCENARIOS:
            got = samples[row.name, scenario]
            each = {c: statistics.median(s.inner.get(c, 0.0) for s in got) for c in INNER}
            commands = statistics.median(sum(s.inner.values()) for s in got)
            rest = statistics.median(s.usec - sum(s.inner.values()) for s in got)
            cells = [f"{each[c]:.2f}" if each[c] else "" for c in INNER]
            print(f"| {row.name} | {scenario} | " + " | ".join(cells) +
                  f" | {commands:.2f} | {rest:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    options = parser.parse_args()
    server = EmbeddedRedis()
    version = ".".join(map(str, redis_version(server.executable)))
    if redis_version(server.executable) < (7, 0, 0):
        raise SystemExit(f"{server.executable} is Redis {version}: this needs Redis 7")
    server.start()
    try:
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})  # the client on one core; Redis may take the other
        assert server.process is not None
        samples, done = measure(server.url, server.process.pid, options.rounds, options.seconds)
    finally:
        server.close()
    print(
        f"Redis {version}, {len(message_html(0))}-byte messages, {PIPELINE} a pipeline; "
        f"spread: {CHANNELS} channels of {PREFILL}+ messages each; hot: one channel at "
        f"MAXLEN {MAXLEN}. Medians of {done} interleaved rounds of "
        f"{PIPELINES_PER_ROUND * PIPELINE} calls a row, after one to warm up: ÷ the bare "
        "PUBLISH's, and in brackets µs per call."
    )
    if hashlib.sha1(BEFORE.encode()).hexdigest() != BEFORE_SHA:
        print("(The shipped script changed: the before rows are not 2bec92c's script.)")
    print()
    report(samples)


if __name__ == "__main__":
    main()
