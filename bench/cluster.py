"""W8 cluster: publish throughput and fan-out on one Redis, a 1-shard and a 3-shard Redis Cluster.

    python -m bench.cluster [--seconds 5] [--quick] [--json]

Three deployments, each fresh, one after the other: ``single`` (one ``redis-server``,
classic ``PUBLISH``), ``cluster-1`` (a Redis Cluster of one primary holding every slot)
and ``cluster-3`` (three primaries), no replicas. Every Redis process is pinned to core
0; every client process (publishers, subscribers) to core 1, so "Redis busy" below is
core 0's load and "load busy" core 1's. On this 2-core machine the three shards share
core 0: their messages/s cannot be three times one shard's. What extrapolates is each
shard's CPU per message (``INFO CPU`` used_cpu_user + used_cpu_sys, before and after,
per node), reported for every phase.

Phases, each bounded by ``--seconds`` and by :data:`MAX_MESSAGES` per client process:

- publish (no subscribers): :data:`PUBLISHERS` processes send to :data:`CHANNELS`
  session channels spread over the slots, :data:`BATCH` messages at a time: with
  ``turbocast.Publisher.batch()`` (the history script; ``SPUBLISH`` inside it on a
  cluster, pipelined per shard), and with bare commands pipelined the same way:
  ``PUBLISH`` (on a cluster, each process sends to one node, as redis-py's
  ``RedisCluster.publish`` does: the cluster bus copies every message to every node),
  and ``SPUBLISH`` to each channel's shard.
- fan-out: :data:`SUBSCRIBERS` processes, each with :data:`COPIES` raw connections per
  shard read with hiredis, subscribe to every channel (``SSUBSCRIBE`` on its shard, or
  ``SUBSCRIBE`` on one node each), so every message is delivered ``SUBSCRIBERS * COPIES``
  times; bare pipelined publishers send. Delivered messages/s is counted by the
  subscribers within the window.

Each phase says which side was the limit: ``redis`` when core 0 was at least 90 % busy,
``load`` when core 1 was and core 0 was not (the figure is then the clients', not
Redis's), ``neither`` otherwise. Ratios are between phases of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import redis
from markupsafe import Markup

from app.embedded_cluster import LocalCluster
from app.embedded_redis import EmbeddedRedis
from bench.common import message_html, new_sids
from turbocast import Publisher
from turbocast.channels import DEFAULT_PREFIX, channel_for
from turbocast.topology import parse

SERVER_CORE, LOAD_CORE = 0, 1
CHANNELS = 1000
BATCH = 100
PUBLISHERS = 4
FANOUT_PUBLISHERS = 2
SUBSCRIBERS, COPIES = 2, 2
#: Messages one client process sends (or counts) at most in a phase, beside the time bound.
MAX_MESSAGES = 3_000_000
#: The history's length: small, so that streams are full and every publish trims, as in
#: a long-running deployment (the shipped default is 1,000).
HISTORY_MAXLEN = 100
#: At or above this share of its core, a side counts as the limit.
SATURATED = 0.9
# What a client sends Redis at the top level, per publisher kind (INFO commandstats).
TOP_COMMAND = {"turbocast": "evalsha", "PUBLISH": "publish", "SPUBLISH": "spublish"}


@dataclass
class Deployment:
    name: str
    url: str
    #: (host, port, pid) of each primary.
    nodes: list[tuple[str, int, int]]

    @property
    def shards(self) -> int:
        return len(self.nodes) if self.name != "single" else 0

    def clients(self) -> list[redis.Redis]:
        return [redis.Redis(host=h, port=p, socket_timeout=10) for h, p, _ in self.nodes]

    def owners(self, channels: list[str]) -> list[int]:
        """The index of the node that owns each channel's slot (0 for one server)."""
        if not self.shards:
            return [0] * len(channels)
        ports = [p for _, p, _ in self.nodes]
        cluster = parse(self.url).client()
        try:
            return [ports.index(cluster.get_node_from_key(c).port) for c in channels]
        finally:
            cluster.close()


@contextlib.contextmanager
def deployment(name: str) -> Iterator[Deployment]:
    """A fresh ``single``, ``cluster-1`` or ``cluster-3``, its Redis pinned to core 0."""
    with contextlib.ExitStack() as stack:
        if name == "single":
            server = stack.enter_context(EmbeddedRedis())
            assert server.process is not None
            dep = Deployment(name, server.url, [(server.host, server.port, server.process.pid)])
        else:
            cluster = stack.enter_context(LocalCluster(int(name.rpartition("-")[2]), 0))
            nodes = [(n.address.rpartition(":")[0], n.port, n.process.pid)  # type: ignore[union-attr]
                     for n in cluster.primaries()]  # fmt: skip
            dep = Deployment(name, cluster.url, nodes)
        if _can_pin():
            for _, _, pid in dep.nodes:
                os.sched_setaffinity(pid, {SERVER_CORE})
        yield dep


def _can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


# The client processes.


def _publisher(spec: dict[str, Any]) -> Callable[[], int]:
    """One batch's sender: sends :data:`BATCH` messages, returns how many."""
    channels, owners, offset = spec["channels"], spec["owners"], spec["offset"]
    html = message_html(0)
    if spec["kind"] == "turbocast":
        publisher = Publisher(spec["url"], history_maxlen=HISTORY_MAXLEN)
        sids, stream = spec["sids"], Markup(html)  # noqa: S704 - the benchmark's own HTML
        cursor = [offset]

        def turbocast_batch() -> int:
            with publisher.batch() as batch:
                for i in range(cursor[0], cursor[0] + BATCH):
                    batch.to_session(sids[i % len(sids)], stream)
            cursor[0] += BATCH
            return BATCH

        return turbocast_batch
    # Bare commands on raw sockets, each batch packed once beforehand and written at once
    # per node, the replies parsed by hiredis: the least a client can spend on a message.
    socks = [socket.create_connection((h, p), timeout=10) for h, p in spec["nodes"]]
    readers = [hiredis.Reader() for _ in socks]
    batches = []
    for first in range(offset, offset + len(channels), BATCH):
        by_node: dict[int, list[bytes]] = {}
        for i in range(first, first + BATCH):
            j = i % len(channels)
            by_node.setdefault(owners[j], []).append(_resp(spec["kind"], channels[j], html))
        batches.append([(node, b"".join(packed), len(packed)) for node, packed in by_node.items()])
    cursor = [0]

    def bare_batch() -> int:
        for node, packed, replies in batches[cursor[0] % len(batches)]:
            socks[node].sendall(packed)
            _replies(socks[node], readers[node], replies)
        cursor[0] += 1
        return BATCH

    return bare_batch


def _replies(sock: socket.socket, reader: Any, count: int) -> None:
    while count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the connection")
            reader.feed(data)
        elif isinstance(reply, hiredis.ReplyError):
            raise RuntimeError(f"Redis refused a publish: {reply}")
        else:
            count -= 1


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Subscriptions:
    """Raw subscribed connections, read with hiredis: counts the messages they get."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.selector = selectors.DefaultSelector()
        self.readers: dict[int, tuple[socket.socket, Any]] = {}
        self.dropped = 0
        command = spec["command"]
        expected = 0
        for host, port, channels in spec["groups"]:
            sock = socket.create_connection((host, port), timeout=10)
            sock.setblocking(False)
            if command == "SSUBSCRIBE":  # one slot a command: one channel each
                sock.sendall(b"".join(_resp(command, c) for c in channels))
            else:
                sock.sendall(_resp(command, *channels))
            expected += len(channels)
            self.readers[sock.fileno()] = (sock, hiredis.Reader())
            self.selector.register(sock, selectors.EVENT_READ)
        confirmed = self.read(time.monotonic() + 30, expected, confirmations=True)
        if confirmed != expected:
            raise RuntimeError(f"{confirmed} of {expected} subscriptions confirmed")

    def read(self, deadline: float, most: int, confirmations: bool = False) -> int:
        """Until ``deadline`` or ``most`` replies of the kind asked for; how many."""
        wanted = (b"subscribe", b"ssubscribe") if confirmations else (b"message", b"smessage")
        count = 0
        while count < most and (left := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(left):
                sock, reader = self.readers[key.fd]
                data = sock.recv(1 << 16)
                if not data:  # Redis closed it (an output buffer over its limit)
                    self.dropped += 1
                    self.selector.unregister(sock)
                    continue
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    if reply[0] in wanted:
                        count += 1
        return count


def client_main(spec: dict[str, Any]) -> None:
    """A client process: get ready, say READY, wait for GO, work the window, print JSON."""
    if _can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})
    seconds = float(spec["seconds"])
    if spec["role"] == "subscribe":
        subs = _Subscriptions(spec)
        print("READY", flush=True)
        sys.stdin.readline()
        cpu0, t0 = time.process_time(), time.monotonic()
        count = subs.read(t0 + seconds, MAX_MESSAGES)
        extra: dict[str, Any] = {"dropped": subs.dropped}
    else:
        step = _publisher(spec)
        step()  # warm: connections open, the script loaded
        print("READY", flush=True)
        sys.stdin.readline()
        cpu0, t0 = time.process_time(), time.monotonic()
        count, deadline = 0, t0 + seconds
        while count < MAX_MESSAGES and time.monotonic() < deadline:
            count += step()
        extra = {}
    wall = time.monotonic() - t0
    print(json.dumps({"count": count, "seconds": wall, "cpu_s": time.process_time() - cpu0,
                      **extra}))  # fmt: skip


# The orchestrator.


class _Client:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cluster", "--client"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"a client process did not get ready: {line.strip()!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        """Its result line, as soon as it is printed (not when the process has exited)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError("a client process gave no result")
        return dict(json.loads(line))

    def stop(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def core_busy() -> list[float]:
    """Seconds each core has been busy (any process), from /proc/stat."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(t) for t in ticks]
            busy.append((sum(values[:8]) - values[3] - values[4]) / hz)  # less idle, iowait
    return busy


def node_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def run_phase(
    dep: Deployment, publishers: list[dict[str, Any]], subscribers: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """Start the clients, open the window for all at once, read every node before and after."""
    clients = dep.clients()
    started: list[_Client] = []
    try:
        # Subscribers first: they are subscribed before any publisher is ready.
        for spec in [*subscribers, *publishers]:
            started.append(_Client({**spec, "seconds": seconds}))
        for c in clients:
            c.config_resetstat()
        cpu0, cores0 = [node_cpu(c) for c in clients], core_busy()
        for c in started:
            c.go()
        results = [c.result(seconds + 60) for c in started]
        cpu = [node_cpu(c) - before for c, before in zip(clients, cpu0, strict=True)]
        cores = [b - a for a, b in zip(cores0, core_busy(), strict=True)]
        stats = [c.info("commandstats") for c in clients]
    finally:
        for c in started:
            c.stop()
        for c in clients:
            c.close()
    # The window: the clients' own (the longest), not the set-up and exit of their processes.
    wall = max(r["seconds"] for r in results)
    pub, sub = results[len(subscribers):], results[: len(subscribers)]  # fmt: skip
    sent = sum(r["count"] for r in pub)
    top = f"cmdstat_{TOP_COMMAND[publishers[0]['kind']]}"
    own = [int(s.get(top, {}).get("calls", 0)) for s in stats]
    commands = [{k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in s.items()} for s in stats]
    redis_busy = sum(cpu) / wall
    load_busy = sum(r["cpu_s"] for r in results) / wall
    out: dict[str, Any] = {
        "deployment": dep.name,
        "shards": dep.shards,
        "publisher": publishers[0]["kind"],
        "publishers": len(publishers),
        "messages": sent,
        "wall_s": wall,
        "msgs_per_s": sent / wall,
        "node_cpu_s": cpu,
        # CPU of each node per message published anywhere, and per message sent to it.
        "node_us_per_msg": [c / sent * 1e6 if sent else None for c in cpu],
        "node_own_msgs": own,
        "node_commands": commands,
        "node_us_per_own_msg": [c / n * 1e6 if n else None for c, n in zip(cpu, own, strict=True)],
        "redis_us_per_msg": sum(cpu) / sent * 1e6 if sent else None,
        "load_us_per_msg": sum(r["cpu_s"] for r in pub) / sent * 1e6 if sent else None,
        "redis_busy": redis_busy,
        "load_busy": load_busy,
        # Each core's busy share from any process: this machine is shared, so a core can
        # be full while this benchmark's side of it is not.
        "core_busy": [c / wall for c in cores],
        "limit": _limit(redis_busy, load_busy, [c / wall for c in cores]),
    }
    if subscribers:
        delivered = sum(r["count"] for r in sub)
        out.update(
            subscribe=subscribers[0]["command"],
            fanout=SUBSCRIBERS * COPIES,
            delivered=delivered,
            delivered_per_s=delivered / seconds,
            delivered_share=delivered / (sent * SUBSCRIBERS * COPIES) if sent else None,
            redis_us_per_delivery=sum(cpu) / delivered * 1e6 if delivered else None,
            dropped_connections=sum(r["dropped"] for r in sub),
        )
    return out


def _limit(redis_busy: float, load_busy: float, cores: list[float]) -> str:
    """Which side set the pace: ``redis``, ``load``, ``shared`` (a core was full, but
    not with this benchmark's work: another process took it) or ``neither``."""
    if redis_busy >= SATURATED:
        return "redis"
    if load_busy >= SATURATED:
        return "load"
    if (
        len(cores) > max(SERVER_CORE, LOAD_CORE)
        and max(cores[SERVER_CORE], cores[LOAD_CORE]) >= SATURATED
    ):
        return "shared"
    return "neither"


def publisher_specs(
    dep: Deployment, kind: str, sids: list[str], channels: list[str], owners: list[int], count: int
) -> list[dict[str, Any]]:
    """``count`` publishers of ``kind``: turbocast, PUBLISH or SPUBLISH."""
    nodes = [[h, p] for h, p, _ in dep.nodes]
    specs = []
    for i in range(count):
        # Classic PUBLISH on a cluster: each process to one node (any node takes it).
        mine = [i % len(nodes)] * len(channels) if kind == "PUBLISH" else owners
        specs.append({"role": "publish", "kind": kind, "url": dep.url, "nodes": nodes,
                      "sids": sids, "channels": channels, "owners": mine,
                      "offset": i * len(channels) // count})  # fmt: skip
    return specs


def subscriber_specs(
    dep: Deployment, command: str, channels: list[str], owners: list[int]
) -> list[dict[str, Any]]:
    specs = []
    for i in range(SUBSCRIBERS):
        groups = []
        for copy in range(COPIES):
            if command == "SSUBSCRIBE":  # a connection per shard, each its shard's channels
                for n, (host, port, _) in enumerate(dep.nodes):
                    groups.append([host, port, [c for c, o in zip(channels, owners, strict=True)
                                                if o == n]])  # fmt: skip
            else:  # all channels on one node, the nodes taken in turn
                host, port, _ = dep.nodes[(i * COPIES + copy) % len(dep.nodes)]
                groups.append([host, port, channels])
        specs.append({"role": "subscribe", "command": command, "groups": groups})
    return specs


#: (deployment, phase name, publisher kind, subscribe command or None), in run order.
PLAN = [
    ("single", "publish", "turbocast", None),
    ("single", "publish", "PUBLISH", None),
    ("single", "fanout", "PUBLISH", "SUBSCRIBE"),
    ("cluster-1", "publish", "turbocast", None),
    ("cluster-1", "publish", "SPUBLISH", None),
    ("cluster-1", "fanout", "SPUBLISH", "SSUBSCRIBE"),
    ("cluster-3", "publish", "turbocast", None),
    ("cluster-3", "publish", "SPUBLISH", None),
    ("cluster-3", "publish", "PUBLISH", None),
    ("cluster-3", "fanout", "SPUBLISH", "SSUBSCRIBE"),
    ("cluster-3", "fanout", "PUBLISH", "SUBSCRIBE"),
]


def row_name(dep: str, phase: str, kind: str) -> str:
    return f"{phase} {dep} {kind}"


def measure(seconds: float) -> dict[str, Any]:
    sids = new_sids(CHANNELS)
    channels = [channel_for(sid, DEFAULT_PREFIX) for sid in sids]
    rows: dict[str, Any] = {}
    version = ""
    for name in dict.fromkeys(d for d, *_ in PLAN):
        with deployment(name) as dep:
            owners = dep.owners(channels)
            with dep.clients()[0] as first:
                version = str(first.info("server")["redis_version"])
            for _, phase, kind, subscribe in (p for p in PLAN if p[0] == name):
                subs = subscriber_specs(dep, subscribe, channels, owners) if subscribe else []
                count = PUBLISHERS if phase == "publish" else FANOUT_PUBLISHERS
                pubs = publisher_specs(dep, kind, sids, channels, owners, count)
                rows[row_name(name, phase, kind)] = run_phase(dep, pubs, subs, seconds)
    return {"seconds": seconds, "channels": CHANNELS, "batch": BATCH, "pinned": _can_pin(),
            "redis_version": version, "history_maxlen": HISTORY_MAXLEN, "rows": rows,
            "ratios": ratios(rows), "capacity": capacity(rows)}  # fmt: skip


#: (label, numerator row, denominator row, figure), all from the same run.
RATIOS = [
    ("turbocast publish msgs/s, 1 shard ÷ one server", "publish cluster-1 turbocast", "publish single turbocast", "msgs_per_s"),
    ("turbocast publish msgs/s, 3 shards ÷ 1 shard", "publish cluster-3 turbocast", "publish cluster-1 turbocast", "msgs_per_s"),
    ("turbocast publish, Redis CPU per message, 3 shards ÷ 1 shard", "publish cluster-3 turbocast", "publish cluster-1 turbocast", "redis_us_per_msg"),
    ("bare publish msgs/s, classic PUBLISH ÷ SPUBLISH, 3 shards", "publish cluster-3 PUBLISH", "publish cluster-3 SPUBLISH", "msgs_per_s"),
    ("bare publish, Redis CPU per message, classic ÷ sharded, 3 shards", "publish cluster-3 PUBLISH", "publish cluster-3 SPUBLISH", "redis_us_per_msg"),
    ("bare publish msgs/s, SPUBLISH 3 shards ÷ 1 shard", "publish cluster-3 SPUBLISH", "publish cluster-1 SPUBLISH", "msgs_per_s"),
    ("fan-out delivered/s, 3 shards ÷ 1 shard (sharded)", "fanout cluster-3 SPUBLISH", "fanout cluster-1 SPUBLISH", "delivered_per_s"),
    ("fan-out delivered/s, classic ÷ sharded, 3 shards", "fanout cluster-3 PUBLISH", "fanout cluster-3 SPUBLISH", "delivered_per_s"),
    ("fan-out, Redis CPU per delivery, classic ÷ sharded, 3 shards", "fanout cluster-3 PUBLISH", "fanout cluster-3 SPUBLISH", "redis_us_per_delivery"),
    ("fan-out delivered/s, 1 shard ÷ one server", "fanout cluster-1 SPUBLISH", "fanout single PUBLISH", "delivered_per_s"),
]  # fmt: skip


def ratios(rows: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for label, a, b, key in RATIOS:
        x, y = rows.get(a, {}).get(key), rows.get(b, {}).get(key)
        out[label] = x / y if x and y else None
    return out


def capacity(rows: dict[str, Any]) -> dict[str, Any]:
    """Extrapolated, not measured: messages/s one saturated core per node would carry.

    Sharded: a shard carries only its own messages, so each adds 1e6 / (CPU µs per
    message it owns). Classic PUBLISH on a cluster: every node pays for every message
    (the bus), so the cluster carries 1e6 / (the busiest node's µs per message), however
    many nodes it has.
    """
    out: dict[str, Any] = {}
    for name, row in rows.items():
        per_own = [v for v in row["node_us_per_own_msg"] if v]
        per_all = [v for v in row["node_us_per_msg"] if v]
        if not per_own or not per_all:
            continue
        if row["shards"] and row["publisher"] != "PUBLISH":
            shard = 1e6 / statistics.mean(per_own)
            out[name] = {"per_shard": shard, "whole": shard * len(per_own)}
        else:
            out[name] = {"per_shard": None, "whole": 1e6 / max(per_all)}
    return out


def sizes(quick: bool) -> float:
    return 1.0 if quick else 4.0


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| W8 phase | msgs/s published | delivered/s (× fan-out) | Redis CPU µs / msg, each node "
        "| Redis CPU µs / msg, all nodes | client CPU µs / msg | Redis busy / load busy | limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        delivered = (f"{_f(r['delivered_per_s'], 0)} (× {r['fanout']}, "
                     f"{_f(100 * (r['delivered_share'] or 0), 0)} % of sent)"
                     if "delivered" in r else "—")  # fmt: skip
        nodes = " · ".join(_f(v, 1) for v in r["node_us_per_msg"])
        lines.append(
            f"| {name} | {_f(r['msgs_per_s'], 0)} | {delivered} | {nodes} | "
            f"{_f(r['redis_us_per_msg'], 1)} | {_f(r['load_us_per_msg'], 1)} | "
            f"{_f(r['redis_busy'], 2)} / {_f(r['load_busy'], 2)} | {r['limit']} |"
        )
    lines += ["", "| W8 ratio (same run) | |", "|---|---|"]
    lines += [f"| {label} | {_f(v, 2)}× |" for label, v in result["ratios"].items()]
    lines += ["", "| W8 extrapolated: msgs/s with a core per node | per shard | whole deployment |",
              "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {_f(c['per_shard'], 0)} | {_f(c['whole'], 0)} |"
              for name, c in result["capacity"].items()]  # fmt: skip
    return lines


def _f(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, help="each phase's window")
    parser.add_argument("--quick", action="store_true", help="1-second windows")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(sys.stdin.readline()))
        return
    if _can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})
    result = measure(args.seconds or sizes(args.quick))
    result["command"] = "python -m bench.cluster " + " ".join(sys.argv[1:])
    print(json.dumps(result) if args.json else "\n".join(table(result)))


if __name__ == "__main__":
    main()
