"""W7 presence: what 1,000 members of one stream cost, against a publish measured alongside.

    python -m bench.presence [--members 1000] [--rounds 3] [--quick] [--json]

Against its own embedded Redis (pinned to core 0; this process, the client, to core 1),
for ``--members`` users with one connection each on one stream, the calls a web process
makes (:class:`turbocast.presence.Presence`):

- ``join``: :meth:`~Presence.join` of each member, one by one;
- ``renew``: the heartbeat, :meth:`~Presence.renew` of all of them in one call (what a
  web process does every ``TURBO_PRESENCE_TTL`` / 3 seconds), per member;
- ``linger``: :meth:`~Presence.linger` of each (the grace period 0), one by one;
- ``reap``: :meth:`~Presence.reap` of the stream, which then finds every member left,
  in one call, per member;
- ``members`` / ``count``: reading a stream of that many members, per call;

and, the same way in the same run, the peers: ``publish``, turbocast's
``Publisher.to_stream`` of a ~300-byte message one by one (the history script, as
shipped), and ``ping``, a bare Redis round trip. Each phase records wall time, the
client's CPU, the Redis process's CPU (every thread, ``/proc/<pid>/task/*/schedstat``)
and the Redis command time (``INFO commandstats``) of its top-level commands, per
member (per call for the reads); each phase's busy fractions (CPU ÷ wall) say which
side set the pace. Memory: ``MEMORY USAGE`` of the stream's two presence keys at the
full membership, and the ``used_memory`` delta of the joins, per member, against the
peer of a plain Redis set of the same user ids. Each phase is run ``--rounds`` times
after a discarded warm-up round (the median is reported); every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from markupsafe import Markup

from app.embedded_redis import EmbeddedRedis
from bench.common import cpu_seconds, message_html
from turbocast import Publisher
from turbocast.presence import Presence, presence_keys

SERVER_CORE, LOAD_CORE = 0, 1
STREAM = "bench:presence"
#: No phase runs longer than this (seconds); a phase cut short records how far it got.
PHASE_SECONDS = 10.0

# What each phase sends Redis at the top level (its scripts' inner commands are counted
# inside EVALSHA's time by INFO commandstats).
COMMANDS = {
    "join": ("evalsha",),
    "renew": ("evalsha",),
    "linger": ("evalsha",),
    "reap": ("evalsha",),
    "members": ("zrangebyscore",),
    "count": ("zrangebyscore",),
    "publish": ("evalsha",),
    "ping": ("ping",),
}


def user_id(i: int) -> str:
    # Not all digits: a set or a hash of integer-like strings would be an intset or a
    # listpack of integers, which would flatter the peer below real (string) ids.
    return f"user-{i}"


class Meter:
    """Times one phase: wall, this process's CPU, Redis's CPU and command time."""

    def __init__(self, client: redis.Redis, redis_pid: int) -> None:
        self.client = client
        self.redis_pid = redis_pid

    def run(self, phase: str, ops: int, per: int, body: Callable[[], int]) -> dict[str, Any]:
        """``body`` does ``ops`` calls (or fewer, if out of time) and returns how many.

        :param per: what each figure is divided by per completed call (members a call
            covers: 1 for one-by-one calls, the membership for renew and reap).
        """
        self.client.config_resetstat()
        redis0, cpu0, t0 = cpu_seconds([self.redis_pid]), time.process_time(), time.perf_counter()
        done = body()
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
        redis_cpu = cpu_seconds([self.redis_pid]) - redis0
        stats = self.client.info("commandstats")
        command_us = sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in COMMANDS[phase])
        units = done * per
        return {
            "calls": done,
            "complete": done == ops,
            "wall_us": wall / units * 1e6 if units else None,
            "redis_cpu_us": redis_cpu / units * 1e6 if units else None,
            "redis_command_us": command_us / units if units else None,
            "client_cpu_us": client_cpu / units * 1e6 if units else None,
            # Near 1: that side was saturated and set the pace.
            "redis_busy": redis_cpu / wall if wall else None,
            "client_busy": client_cpu / wall if wall else None,
        }


def bounded(count: int, call: Callable[[int], object]) -> Callable[[], int]:
    """A loop of ``count`` calls that stops after :data:`PHASE_SECONDS`; how many ran."""

    def body() -> int:
        deadline = time.perf_counter() + PHASE_SECONDS
        for i in range(count):
            call(i)
            if time.perf_counter() > deadline:
                return i + 1
        return count

    return body


def used_memory(client: redis.Redis) -> int:
    """Redis's used_memory, once its periodic tasks have shrunk the clients' buffers."""
    time.sleep(0.25)  # serverCron / clientsCron run every 100 ms
    return int(client.info("memory")["used_memory"])


def one_round(
    meter: Meter, presence: Presence, publisher: Publisher, members: int, repeats: int
) -> dict[str, Any]:
    """Every phase once, on an empty stream; the stream is empty again after it."""
    client = meter.client
    users = [user_id(i) for i in range(members)]
    conns = [os.urandom(9).hex() for _ in range(members)]
    held = {STREAM: list(zip(users, conns, strict=True))}
    out: dict[str, Any] = {}
    used0 = used_memory(client)
    out["join"] = meter.run(
        "join", members, 1, bounded(members, lambda i: presence.join(STREAM, users[i], conns[i]))
    )
    assert presence.count(STREAM) == out["join"]["calls"], "a join was not counted"
    used1 = used_memory(client)
    sockets, users_key = presence_keys(STREAM, presence.prefix)
    memory = {
        "sockets_bytes": client.memory_usage(sockets, samples=0),
        "users_bytes": client.memory_usage(users_key, samples=0),
        "encodings": {
            "sockets": client.object("encoding", sockets).decode(),
            "users": client.object("encoding", users_key).decode(),
        },
        "used_memory_delta": used1 - used0,
    }
    out["renew"] = meter.run(
        "renew", repeats, members, bounded(repeats, lambda _: presence.renew(held))
    )
    out["members"] = meter.run(
        "members", repeats, 1, bounded(repeats, lambda _: presence.members(STREAM))
    )
    out["count"] = meter.run(
        "count", repeats, 1, bounded(repeats, lambda _: presence.count(STREAM))
    )
    out["linger"] = meter.run(
        "linger",
        members,
        1,
        bounded(members, lambda i: presence.linger(STREAM, users[i], conns[i])),
    )
    time.sleep(0.005)  # grace 0: past the last linger's millisecond, the reap finds all
    left: list[str] = []
    out["reap"] = meter.run(
        "reap",
        1,
        members,
        bounded(1, lambda _: left.extend(presence.reap([STREAM]).get(STREAM, []))),
    )
    assert len(left) == members and presence.count(STREAM) == 0, "the reap missed members"
    # The peers, the same way.
    html = Markup(message_html(0))  # noqa: S704 - the benchmark's own HTML
    out["publish"] = meter.run(
        "publish", members, 1, bounded(members, lambda _: publisher.to_stream("bench:peer", html))
    )
    out["ping"] = meter.run("ping", members, 1, bounded(members, lambda _: client.ping()))
    # The memory peer: the least that knows who is there, a set of the user ids.
    client.delete("bench:peer-set")
    client.sadd("bench:peer-set", *users)
    memory["peer_set_bytes"] = client.memory_usage("bench:peer-set", samples=0)
    memory["peer_set_encoding"] = client.object("encoding", "bench:peer-set").decode()
    client.delete("bench:peer-set")
    out["memory"] = memory
    return out


def measure(members: int, rounds: int, repeats: int) -> dict[str, Any]:
    """Start a Redis, pin it and this process, run the rounds; medians and ratios."""
    with EmbeddedRedis() as server:
        assert server.process is not None
        pid = server.process.pid
        pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
        if pinned:
            os.sched_setaffinity(pid, {SERVER_CORE})
            os.sched_setaffinity(0, {LOAD_CORE})
        client = redis.Redis.from_url(server.url)
        presence = Presence(client, ttl=60.0, grace=0.0)
        publisher = Publisher(client=client)
        meter = Meter(client, pid)
        # Warm up: load the scripts, open the connection, touch every code path once.
        presence.join("bench:warm", "w", "w")
        presence.renew({"bench:warm": [("w", "w")]})
        presence.linger("bench:warm", "w", "w")
        time.sleep(0.005)
        presence.reap(["bench:warm"])
        publisher.to_stream("bench:peer", Markup(message_html(0)))  # noqa: S704
        # A first round is discarded: it warms up Redis's own allocations (its used_memory
        # fell by some 200 KiB during every first round's joins) and the client's.
        runs = [one_round(meter, presence, publisher, members, repeats) for _ in range(rounds + 1)]
        runs = runs[1:]
        version = client.info("server")["redis_version"]
        client.close()
    phases = [p for p in runs[0] if p != "memory"]
    keys = ["wall_us", "redis_cpu_us", "redis_command_us", "client_cpu_us", "redis_busy",
            "client_busy"]  # fmt: skip
    summary = {
        phase: {
            k: statistics.median(r[phase][k] for r in runs if r[phase][k] is not None) for k in keys
        }
        | {"complete": all(r[phase]["complete"] for r in runs)}
        for phase in phases
    }
    mem = runs[-1]["memory"]
    keys_bytes = mem["sockets_bytes"] + mem["users_bytes"]
    memory = {
        **mem,
        "bytes_per_member": keys_bytes / members,
        "used_memory_delta_per_member": statistics.median(
            r["memory"]["used_memory_delta"] for r in runs
        )
        / members,
        "peer_set_bytes_per_member": mem["peer_set_bytes"] / members,
        "ratio_to_set": keys_bytes / mem["peer_set_bytes"],
    }
    ratios = {
        peer: {
            phase: {
                k: summary[phase][k] / summary[peer][k]
                for k in ("wall_us", "redis_cpu_us", "redis_command_us")
                if summary[phase][k] and summary[peer][k]
            }
            for phase in phases
            if phase != peer
        }
        for peer in ("publish", "ping")
    }
    return {
        "members": members,
        "rounds": rounds,
        "read_repeats": repeats,
        "pinned": pinned,
        "redis_version": version,
        "phases": summary,
        "ratios": ratios,
        "memory": memory,
        "per_round": runs,
    }


def sizes(quick: bool) -> tuple[int, int, int]:
    """(members, rounds, repeats of the renew and of each read)."""
    return (300, 1, 5) if quick else (1000, 3, 20)


def table(result: dict[str, Any]) -> list[str]:
    """Markdown rows: each phase per member (per call for reads), and its ratios."""
    per_call = {"members", "count"}
    lines = [
        "| W7 phase | wall µs | Redis CPU µs | Redis command µs | ÷ publish (wall / Redis CPU) "
        "| ÷ PING (wall) | Redis busy / client busy |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "join": "join, one by one (per member)",
        "renew": "heartbeat: renew of all in one call (per member)",
        "linger": "leave 1: linger, one by one (per member)",
        "reap": "leave 2: reap of all in one call (per member)",
        "members": "members() (per call)",
        "count": "count() (per call)",
        "publish": "peer: Publisher.to_stream, one by one (per message)",
        "ping": "peer: PING, one by one",
    }
    for phase, label in labels.items():
        p = result["phases"].get(phase)
        if p is None:
            continue
        by_pub = result["ratios"]["publish"].get(phase, {})
        by_ping = result["ratios"]["ping"].get(phase, {})
        pub = (
            f"{_f(by_pub.get('wall_us'), 3)}× / {_f(by_pub.get('redis_cpu_us'), 3)}×"
            if by_pub
            else "1"
        )
        ping = f"{_f(by_ping.get('wall_us'), 3)}×" if by_ping else "1"
        note = "" if p["complete"] else " (cut short by the time bound)"
        if phase in per_call:
            label = f"{label} of {result['members']:,} members"
        lines.append(
            f"| {label}{note} | {_f(p['wall_us'])} | {_f(p['redis_cpu_us'])} | "
            f"{_f(p['redis_command_us'])} | {pub} | {ping} | "
            f"{_f(p['redis_busy'], 2)} / {_f(p['client_busy'], 2)} |"
        )
    m = result["memory"]
    lines += [
        "",
        "| W7 Redis memory | bytes per member |",
        "|---|---|",
        f"| MEMORY USAGE of the two presence keys ({m['encodings']['sockets']} + "
        f"{m['encodings']['users']}) ÷ {result['members']:,} | {_f(m['bytes_per_member'])} |",
        f"| used_memory delta of the joins ÷ {result['members']:,} | "
        f"{_f(m['used_memory_delta_per_member'])} |",
        f"| peer: a Redis set of the same user ids ({m['peer_set_encoding']}) | "
        f"{_f(m['peer_set_bytes_per_member'])} |",
        f"| presence keys ÷ the set | {_f(m['ratio_to_set'], 2)}× |",
    ]
    return lines


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--quick", action="store_true", help="300 members, one round")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    members, rounds, repeats = sizes(args.quick)
    result = measure(args.members or members, args.rounds or rounds, repeats)
    result["command"] = "python -m bench.presence " + " ".join(sys.argv[1:])
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(table(result)))


if __name__ == "__main__":
    main()
