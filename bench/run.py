"""The benchmark: turbocast against Flask-SocketIO and against the floor, in one run.

    python -m bench.run [--runs 2] [--targets ...] [--workloads W1,W2,...] [--quick]

Each target gets its own server process(es) pinned to core 0, a fresh Redis, a
separate publisher process (standing in for a Celery worker) and a separate
client load generator, those three pinned to core 1. Server CPU comes from
/proc (user + system, every thread of every process of the server). Results go
to bench/results/run-<n>.json; ``python -m bench.report`` writes BENCHMARKS.md.
Every load is bounded in count and time and aims only at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.embedded_redis import EmbeddedRedis, free_port
from bench import cpushare
from bench.common import SECRET_KEY, cpu_seconds, new_sids, percentile, rss_kib
from bench.cpushare import CpuShare

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER_CORE, LOAD_CORE = "0", "1"
PY = sys.executable


def pinned(core: str, args: list[str]) -> list[str]:
    return ["taskset", "-c", core, *args]


@dataclass
class Target:
    """A server under test: how to start it and how to reach it."""

    name: str
    kind: str  # what the publisher and the load generator speak: turbocast, floor, socketio
    command: Callable[[int, int], list[str]]  # (port, sockets) -> argv
    env: dict[str, str] = field(default_factory=dict)
    path: str = "/turbo-stream"

    def url(self, port: int) -> str:
        scheme = "http" if self.kind == "socketio" else "ws"
        return f"{scheme}://127.0.0.1:{port}{self.path}"


def gunicorn(app: str, worker: str, threads: int, hooks: bool = True) -> list[str]:
    args = [PY, "-m", "gunicorn"]
    if hooks:
        args += ["-c", "python:turbocast.gunicorn_hooks"]
    args += ["-w", "1", "-k", worker, "--no-control-socket", "--backlog", "4096"]
    # gthread caps its clients at --worker-connections too (1000 by default).
    args += ["--worker-connections", str(max(threads, 1000))]
    if worker == "gthread":
        args += ["--threads", str(threads)]
    return [*args, "--log-level", "warning", app]


#: Messages per round trip of W2's publishers (each mechanism pipelined its own way).
BATCH = 100
#: The share of its core each server gets in W2: small enough that the load core
#: (Redis, the publisher, the load generator) outpaces every target's server.
SERVER_SHARE = 0.25
#: In how many of the window's quota periods a capped server must have used up its
#: share for its run to count as saturated.
SATURATED = 0.8

TARGETS = {
    "turbocast-threads": Target(
        "turbocast-threads", "turbocast",
        lambda port, n: gunicorn("app:create_app()", "gthread", n + 64) + ["-b", f"127.0.0.1:{port}"],
    ),
    # The same server with Prometheus counting off (TURBO_METRICS=0): what the metrics
    # cost where the server is the limit.
    "turbocast-threads-nometrics": Target(
        "turbocast-threads-nometrics", "turbocast",
        lambda port, n: gunicorn("app:create_app()", "gthread", n + 64) + ["-b", f"127.0.0.1:{port}"],
        env={"TURBO_METRICS": "0"},
    ),
    "turbocast-gevent": Target(
        "turbocast-gevent", "turbocast",
        lambda port, n: gunicorn("app:create_app()", "gevent", n + 64) + ["-b", f"127.0.0.1:{port}"],
    ),
    "floor": Target(
        "floor", "floor",
        lambda port, n: [PY, "-m", "bench.servers.floor", "--port", str(port), "--redis", "{redis}"],
        path="/",
    ),
    # flask-sock's documented route under the same gunicorn command line as
    # turbocast-threads; it speaks the floor's protocol (?sid=, plain PUBLISH).
    "flasksock-threads": Target(
        "flasksock-threads", "floor",
        lambda port, n: gunicorn("bench.servers.flasksock_app:create_app()", "gthread", n + 64)
        + ["-b", f"127.0.0.1:{port}"],
        path="/ws",
    ),
    "socketio-threads": Target(
        "socketio-threads", "socketio",
        lambda port, n: gunicorn("bench.servers.socketio_app:create_app()", "gthread", n + 64, False)
        + ["-b", f"127.0.0.1:{port}"],
        env={"SIO_MODE": "threading"},
        path="/",
    ),
    "socketio-gevent": Target(
        "socketio-gevent", "socketio",
        lambda port, n: gunicorn("bench.servers.socketio_app:create_app()", "gevent", n + 64, False)
        + ["-b", f"127.0.0.1:{port}"],
        env={"SIO_MODE": "gevent"},
        path="/",
    ),
}  # fmt: skip


class Servers:
    """The target's server processes (one per port), pinned to the server core."""

    def __init__(
        self,
        target: Target,
        redis_url: str,
        processes: int,
        sockets: int,
        share: CpuShare | None = None,
    ) -> None:
        self.target = target
        self.ports = [free_port() for _ in range(processes)]
        env = {
            **os.environ,
            "SECRET_KEY": SECRET_KEY,
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
            "TURBO_TRANSPORT": "turbo",
            "PYTHONUNBUFFERED": "1",
            **target.env,
        }
        self.procs = []
        for port in self.ports:
            argv = [a.replace("{redis}", redis_url) for a in target.command(port, sockets)]
            self.procs.append(
                subprocess.Popen(
                    pinned(SERVER_CORE, argv),
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=share.join if share else None,  # noqa: PLW1509 - no threads here
                )  # fmt: skip
            )
        for port in self.ports:
            self._wait(port)

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)  # noqa: S310
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.target.name} did not start on port {port}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def urls(self) -> list[str]:
        return [self.target.url(port) for port in self.ports]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Load:
    """The client load generator, pinned to the load core."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            pinned(LOAD_CORE, [PY, "-m", "bench.load", json.dumps(spec)]),
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        first = self._line()
        if not first.startswith("READY"):
            raise RuntimeError(f"the load generator did not get ready: {first.strip()}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited early")
        return line

    def send(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()

    def wait_done(self) -> bool:
        """Wait until the load got everything (or gave up) and still holds its sockets."""
        return self._line().startswith("DONE")

    def finish(self) -> dict[str, Any]:
        """Tell an idle load its last step is done; its result."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.result()

    def result(self, timeout: float = 300) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    @property
    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid])


def publish(kind: str, redis_url: str, spec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Run the publisher process to the end; its summary and its CPU seconds."""
    proc = subprocess.Popen(
        pinned(LOAD_CORE, [PY, "-m", "bench.publish", kind, redis_url, json.dumps(spec)]),
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    out = proc.stdout.read() if proc.stdout else ""
    # Its CPU time from the kernel when it is reaped: no polling of /proc meanwhile,
    # which woke the orchestrator every 50 ms and showed up in every target's tail.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return json.loads(out.strip().splitlines()[-1]), usage.ru_utime + usage.ru_stime


def measured(
    target: Target,
    servers: Servers,
    redis: EmbeddedRedis,
    load_spec: dict[str, Any],
    pub_spec: dict[str, Any],
    share: CpuShare | None = None,
) -> dict[str, Any]:
    """One load against running servers: server CPU per delivered message, latencies, loss.

    With ``share`` (the servers' capped cgroup), also the share of the window's quota
    periods in which the servers used up their quota (``throttled``).
    """
    load = Load({"kind": target.kind, "urls": servers.urls, **load_spec})
    time.sleep(0.5)  # let connection set-up CPU settle before the window opens
    cpu0, load_cpu0, t0 = cpu_seconds(servers.pids), load.cpu, time.monotonic()
    redis_cpu0 = cpu_seconds([redis_pid(redis)])
    periods = throttled = 0
    if share:
        share.cap()
        periods, throttled = share.periods()
    try:
        summary, pub_cpu = publish(target.kind, redis.url, pub_spec)
        done = load.wait_done()
        wall = time.monotonic() - t0
        server_cpu = cpu_seconds(servers.pids) - cpu0
    finally:
        if share:
            periods_now, throttled_now = share.periods()
            periods, throttled = periods_now - periods, throttled_now - throttled
            share.lift()
    load_cpu = load.cpu
    result = load.finish()
    assert done
    delivered = result["received"]
    return {
        **result,
        "published": summary,
        "server_cpu_s": server_cpu,
        "cpu_us_per_msg": server_cpu / delivered * 1e6 if delivered else None,
        "loss": load_spec["expect"] - delivered,
        "wall_s": wall,
        "publisher_cpu_s": pub_cpu,
        "publisher_rate": summary["rate"],
        "throttled": throttled / periods if periods else None,
        # Near 1.0: the load generator's core, not the server, set the pace.
        "load_core_busy": (
            cpu_seconds([redis_pid(redis)]) - redis_cpu0 + pub_cpu + load_cpu - load_cpu0
        )
        / wall
        if wall
        else None,
    }


def redis_pid(redis: EmbeddedRedis) -> int:
    assert redis.process is not None
    return redis.process.pid


def targeted(
    target: Target,
    processes: int,
    sockets: int,
    count: int,
    rate: float,
    keep: bool = False,
    batch: int = 0,
    share: CpuShare | None = None,
) -> dict[str, Any]:
    """Targeted pushes to sockets that are each their own session, on fresh servers.

    ``batch``: publish ``batch`` messages per round trip (with ``rate`` 0); ``share``:
    the cgroup that caps the servers' CPU.
    """
    sids = new_sids(sockets)
    with EmbeddedRedis() as redis:
        servers = Servers(target, redis.url, processes, sockets // processes, share)
        try:
            return measured(
                target, servers, redis,
                {"mode": "collect", "sids": sids, "expect": count,
                 "timeout": count / rate + 30 if rate else 120, "keep_latencies": keep},
                {"sids": sids, "count": count, "rate": rate, "batch": batch},
                share,
            )  # fmt: skip
        finally:
            servers.stop()


def w1(target: Target, quick: bool) -> dict[str, Any]:
    """W1 latency: 200 sockets, each its own session, 500 targeted msgs/s for 10 s."""
    return targeted(target, 1, 200, 500 * (4 if quick else 10), 500, keep=True)


def w2(target: Target, quick: bool) -> dict[str, Any]:
    """W2 throughput at saturation: 20,000 targeted messages to 200 sockets.

    Every target's publisher sends 100 messages per round trip, and the server is capped
    at ``SERVER_SHARE`` of its core (a CPU cgroup), so the server, not the load core, sets
    the pace. ``throttled`` is the share of the window's quota periods in which the
    kernel held the server back for its quota: near 1, the server was the limit
    (``limit: server``); below ``SATURATED``, the load side was, and the CPU per message
    is not a saturation figure (``limit: load``). Where no cgroup can be made (not root, no
    CPU controller) the server runs uncapped (``limit: uncapped``).
    """
    share = cpushare.make(f"turbocast-bench-{os.getpid()}", SERVER_SHARE)
    try:
        # The same in a quick run: fewer messages left a cheap capped server throttled in
        # too few of the window's periods to count as saturated (``quick`` is unused here).
        r = targeted(target, 1, 200, 20000, 0, batch=BATCH, share=share)
    finally:
        if share is not None:
            share.remove()
    r["batch"] = BATCH
    r["publisher_us_per_msg"] = r["published"].get("cpu_us_per_msg")
    r["server_share"] = share.share if share is not None else None
    r["cgroup"] = str(share.directory) if share is not None else None
    # (Not received ÷ the first-to-last window: a capped server delivers in bursts.)
    # What one whole core of the server would deliver at this CPU per message.
    r["per_core_per_s"] = 1e6 / r["cpu_us_per_msg"] if r["cpu_us_per_msg"] else None
    if share is None:
        r["limit"] = "uncapped"
    else:
        r["limit"] = "server" if (r["throttled"] or 0) >= SATURATED else "load"
    return r


def w3(target: Target, quick: bool) -> dict[str, Any]:
    """W3 broadcast: 1,000 sockets, 20 broadcasts: time until the last socket has each."""
    sockets, count = (300, 10) if quick else (1000, 20)
    sids = new_sids(sockets)
    with EmbeddedRedis() as redis:
        servers = Servers(target, redis.url, 1, len(sids))
        try:
            r = measured(
                target, servers, redis,
                {"mode": "collect", "sids": sids, "expect": sockets * count, "timeout": 120,
                 "keep_latencies": True, "keep_numbers": True},
                {"count": count, "broadcast": True, "spacing": 0.6},
            )  # fmt: skip
        finally:
            servers.stop()
    last: dict[int, int] = {}
    for n, latency in zip(r.pop("numbers"), r["latencies_ns"], strict=True):
        last[n] = max(last.get(n, 0), latency)
    per_broadcast = [v / 1e6 for v in last.values()]
    r["last_socket_p50_ms"] = percentile(per_broadcast, 50)
    r["last_socket_max_ms"] = max(per_broadcast) if per_broadcast else None
    r["latencies_ns"] = []
    return r


def w4(target: Target, quick: bool) -> dict[str, Any]:
    """W4 memory: server RSS at 0, 1,000 and 3,000 idle sockets."""
    steps = [300, 600] if quick else [1000, 2000]
    sids = new_sids(sum(steps))
    with EmbeddedRedis() as redis:
        servers = Servers(target, redis.url, 1, len(sids))
        try:
            # One socket opened and closed first, so the relay and its imports exist.
            Load({"kind": target.kind, "urls": servers.urls, "mode": "idle", "steps": [1],
                  "sids": new_sids(1)}).finish()  # fmt: skip
            time.sleep(1.0)
            points = {0: rss_kib(servers.pids)}
            load = Load({"kind": target.kind, "urls": servers.urls, "mode": "idle",
                         "steps": steps, "sids": sids})  # fmt: skip
            total = steps[0]
            time.sleep(1.0)
            points[total] = rss_kib(servers.pids)
            reply = load.send("")
            total = int(reply.split()[1])
            time.sleep(1.0)
            points[total] = rss_kib(servers.pids)
            load.finish()
        finally:
            servers.stop()
    top = max(points)
    return {
        "rss_kib": points,
        "kib_per_socket": (points[top] - points[0]) / top,
        "kib_per_socket_first_step": (points[steps[0]] - points[0]) / steps[0],
    }


def w5(target: Target, quick: bool) -> dict[str, Any]:
    """W5 scale-out: 800 sockets over 4 web processes vs 1, targeted pushes: CPU per message."""
    count = 500 * (4 if quick else 8)
    one, four = (targeted(target, processes, 800, count, 500) for processes in (1, 4))
    a, b = one["cpu_us_per_msg"], four["cpu_us_per_msg"]
    return {"one": one, "four": four, "ratio_4_to_1": b / a if a and b else None}


def w6(target: Target, quick: bool) -> dict[str, Any]:
    """W6 end to end: a view enqueues a Celery task; its stream reaches the socket: p50/p99."""
    if target.kind != "turbocast":
        return {"skipped": "turbocast only: the view and the Celery task are turbocast's"}
    count = 50 if quick else 200
    with EmbeddedRedis() as redis:
        servers = Servers(target, redis.url, 1, 8)
        env = {
            **os.environ,
            "SECRET_KEY": SECRET_KEY,
            "REDIS_URL": redis.url,
            "LOG_LEVEL": "WARNING",
        }
        log = Path(tempfile.mkdtemp(prefix="turbocast-bench-")) / "worker.log"
        worker = subprocess.Popen(
            pinned(LOAD_CORE, [PY, "-m", "celery", "-A", "workers.celery", "worker", "-l", "INFO",
                               "--logfile", str(log), "--concurrency", "2", "--without-gossip",
                               "--without-mingle"]),
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for_worker(worker, log)
            base = f"http://127.0.0.1:{servers.ports[0]}"
            load = Load({"kind": "turbocast", "urls": servers.urls, "mode": "e2e",
                         "sids": new_sids(1), "count": count, "notify_url": f"{base}/notify"})  # fmt: skip
            r = load.result()
        finally:
            worker.terminate()
            worker.wait(20)
            servers.stop()
    return r


def w7(target: Target, quick: bool) -> dict[str, Any]:
    """W7 presence: 1,000 members' join, heartbeat, leave and reads, Redis memory per member.

    No web server: bench/presence.py drives turbocast's ``Presence`` against its own Redis
    (Redis on core 0, the client on core 1), beside a ``Publisher.to_stream`` publish and a
    PING measured the same way in the same process, for the ratios.
    """
    if target.kind != "turbocast":
        return {"skipped": "turbocast only: presence is turbocast's"}
    result = _library_workload("bench.presence", quick)
    result.pop("per_round", None)
    return result


def w8(target: Target, quick: bool) -> dict[str, Any]:
    """W8 cluster: publish and fan-out msgs/s on one Redis, a 1-shard and a 3-shard cluster.

    No web server: bench/cluster.py starts each deployment (Redis on core 0), publisher
    and subscriber processes (core 1), sharded and classic pub/sub, in one run.
    """
    if target.kind != "turbocast":
        return {"skipped": "turbocast only: the publisher under test is turbocast's"}
    return _library_workload("bench.cluster", quick)


def w9(target: Target, quick: bool) -> dict[str, Any]:
    """W9 permessage-deflate: bytes on the wire and CPU per message, with and without.

    No web server: bench/deflate.py builds each frame as the relay does, for three sizes of
    Turbo Stream, against the frame as it is in the same run.
    """
    if target.kind != "turbocast":
        return {"skipped": "turbocast only: the frames are turbocast's"}
    return _library_workload("bench.deflate", quick)


def w10(target: Target, quick: bool) -> dict[str, Any]:
    """W10 publish cost: ``Publisher.to_session`` against a bare redis-py PUBLISH.

    No web server: bench/publish_cost.py publishes one by one to its own Redis, the
    variants interleaved round by round, the peer in the same run.
    """
    if target.kind != "turbocast":
        return {"skipped": "turbocast only: the publisher under test is turbocast's"}
    return _library_workload("bench.publish_cost", quick)


def w11(target: Target, quick: bool) -> dict[str, Any]:
    """W11 the history script's cost to Redis against a bare PUBLISH, and its variants.

    No web server: bench/script_cost.py against its own Redis 7; its tables as it prints
    them (``quick``: one round).
    """
    if target.kind != "turbocast":
        return {"skipped": "turbocast only: the script is turbocast's"}
    argv = [PY, "-m", "bench.script_cost", *(["--rounds", "1", "--seconds", "1"] if quick else [])]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return {"tables": proc.stdout.strip().splitlines()}


def _library_workload(module: str, quick: bool) -> dict[str, Any]:
    """Run a workload that measures the library against Redis on its own; its JSON."""
    argv = [PY, "-m", module, "--json", *(["--quick"] if quick else [])]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _wait_for_worker(worker: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until the Celery worker says it is ready (connected to the broker, consuming)."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and "ready." in log.read_text(errors="replace")):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Celery worker did not start: {log}")
        time.sleep(0.1)


WORKLOADS = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
    "W7": w7,
    "W8": w8,
    "W9": w9,
    "W10": w10,
    "W11": w11,
}
DEFAULT_TARGETS = ["turbocast-threads", "turbocast-gevent", "floor", "socketio-threads"]
# Memory is where the serving mode matters most: both peers' modes too. W6 is turbocast's own.
WORKLOAD_TARGETS = {
    "W4": [*DEFAULT_TARGETS, "socketio-gevent"],
    "W6": ["turbocast-threads", "turbocast-gevent"],
    # The library against Redis, no server: one row (the target only names turbocast).
    "W7": ["turbocast-threads"],
    "W8": ["turbocast-threads"],
    "W9": ["turbocast-threads"],
    "W10": ["turbocast-threads"],
    "W11": ["turbocast-threads"],
    # Both modes of both peers at saturation.
    "W2": [*DEFAULT_TARGETS, "socketio-gevent"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--targets", default="", help="comma-separated; default: per workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="smaller loads, for a smoke test")
    parser.add_argument("--out", default=str(RESULTS), help="where run-<n>.json go")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for run in range(1, args.runs + 1):
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "command": "python -m bench.run " + " ".join(sys.argv[1:]),
            "quick": args.quick,
            "workloads": {},
        }
        for workload in args.workloads.split(","):
            names = (
                args.targets.split(",")
                if args.targets
                else WORKLOAD_TARGETS.get(workload, DEFAULT_TARGETS)
            )
            for name in names:
                started = time.monotonic()
                print(f"run {run} {workload} {name} ...", flush=True)
                try:
                    result = WORKLOADS[workload](TARGETS[name], args.quick)
                except Exception as exc:  # noqa: BLE001 - record the failure, go on
                    result = {"error": repr(exc)}
                result["bench_seconds"] = time.monotonic() - started
                results["workloads"].setdefault(workload, {})[name] = result
                print(json.dumps(_brief(result)), flush=True)
        (out / f"run-{run}.json").write_text(json.dumps(results, indent=1, default=str))


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not isinstance(v, list | dict) or k == "rss_kib"}


if __name__ == "__main__":
    main()
