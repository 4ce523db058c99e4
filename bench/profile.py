"""Profile the server under a workload with py-spy: where does a delivered message's CPU go?

    python -m bench.profile [--target turbocast-threads] [--workload W2] [--seconds 8]

Samples the server's worker process (the thread holding the GIL: the one
burning CPU) while the workload runs and
prints the functions with the most samples (self and total), from py-spy's
collapsed stacks; the raw profile is kept in bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.embedded_redis import EmbeddedRedis
from bench.common import new_sids, tree
from bench.run import RESULTS, TARGETS, Load, Servers, publish


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="turbocast-threads")
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate-hz", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    args = parser.parse_args()
    target = TARGETS[args.target]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{args.target}.txt"
    sids = new_sids(args.sockets)
    with EmbeddedRedis() as redis:
        servers = Servers(target, redis.url, 1, len(sids))
        try:
            pid = max(tree(servers.pids))  # the worker (gunicorn's child), or the server itself
            load = Load({"kind": target.kind, "urls": servers.urls, "mode": "collect",
                         "sids": sids, "expect": args.count, "timeout": 120})  # fmt: skip
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--duration", str(args.seconds),
                 "--rate", str(args.rate_hz), "--format", "raw", "--output", str(out),
                 *(["--gil"] if args.gil else ["--threads"])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)
            pub = threading.Thread(
                target=publish,
                args=(
                    target.kind,
                    redis.url,
                    {"sids": sids, "count": args.count, "rate": args.rate},
                ),
            )
            pub.start()
            spy.wait()
            pub.join()
            print(load.result())
        finally:
            servers.stop()
    report(out)


def report(path) -> None:  # type: ignore[no-untyped-def]
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith("thread ")]
        if not frames or "(idle)" in stack:
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"{samples} busy samples")
    print("-- self")
    for frame, n in own.most_common(25):
        print(f"{n / samples:6.1%}  {frame}")
    print("-- total")
    for frame, n in total.most_common(30):
        print(f"{n / samples:6.1%}  {frame}")


if __name__ == "__main__":
    main()
