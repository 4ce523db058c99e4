"""Server CPU per delivered message, thread by thread: the relay, the writers, the rest.

    python -m bench.threadcpu [--target turbocast-threads] [--count 5000] [--rate 500]

Runs a targeted load (like W1 with ``--rate 500``, like W2 with ``--rate 0``) and
reads every thread's CPU time from ``/proc/<pid>/task/<tid>/schedstat`` before and
after; thread names come from ``py-spy dump`` (``turbo-relay``, ``turbo-reader``,
``turbo-heartbeat``, gunicorn's request threads that write to the sockets). Meant
for the threads mode: under gevent every greenlet shares one thread.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from app.embedded_redis import EmbeddedRedis
from bench.common import new_sids, tree
from bench.run import TARGETS, Load, Servers, publish

_THREAD = re.compile(r'^Thread (\d+) \(\w+\): "(.*)"', re.MULTILINE)


def thread_names(pid: int) -> dict[str, str]:
    """Native thread id -> Python thread name, from py-spy."""
    spy = Path(sys.executable).with_name("py-spy")
    out = subprocess.run(
        [str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
    ).stdout
    return {tid: name for tid, name in _THREAD.findall(out)}


def thread_cpu(pid: int) -> dict[str, int]:
    """Native thread id -> nanoseconds on a CPU so far."""
    cpu = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu[tid] = int(f.read().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return cpu


def group(name: str) -> str:
    if name.startswith("turbo-"):
        return name
    if name.startswith("ThreadPoolExecutor"):
        return "request threads (the sockets' writers)"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="turbocast-threads")
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500, help="msgs/s; 0: as fast as possible")
    args = parser.parse_args()
    target = TARGETS[args.target]
    sids = new_sids(args.sockets)
    with EmbeddedRedis() as redis:
        servers = Servers(target, redis.url, 1, len(sids))
        try:
            pid = max(tree(servers.pids))  # the worker (gunicorn's child)
            load = Load({"kind": target.kind, "urls": servers.urls, "mode": "collect",
                         "sids": sids, "expect": args.count, "timeout": 120})  # fmt: skip
            names = thread_names(pid)
            before = thread_cpu(pid)
            start = time.monotonic()
            publish(target.kind, redis.url, {"sids": sids, "count": args.count, "rate": args.rate})
            result = load.result()
            after = thread_cpu(pid)
            seconds = time.monotonic() - start
        finally:
            servers.stop()
    received = result["received"]
    groups: collections.Counter[str] = collections.Counter()
    for tid, ns in after.items():
        groups[group(names.get(tid, ""))] += ns - before.get(tid, 0)
    total = sum(groups.values())
    print(f"{args.target}: {received} of {args.count} messages in {seconds:.1f} s")
    print(f"{total / received / 1000:8.1f} µs/msg  all threads")
    for name, ns in groups.most_common():
        print(f"{ns / received / 1000:8.1f} µs/msg  {name}")


if __name__ == "__main__":
    main()
