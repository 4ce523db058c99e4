"""The client load generator: many WebSockets in one asyncio process, on its own core.

    python -m bench.load SPEC_JSON

SPEC: {"kind": "turbocast"|"floor"|"socketio", "urls": [...], "sids": [...],
"mode": "collect"|"idle"|"e2e", "expect": N, "timeout": s, ...}. Sessions are
spread over the URLs round-robin (several web processes). It prints ``READY``
once every socket is open, and a JSON result line at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from bench.common import parse, percentile, turbocast_cookie

BATCH = 100  # concurrent handshakes


class Client:
    """One socket of any kind; calls ``on_message(text)`` for each message."""

    def __init__(self, kind: str, url: str, sid: str, on_message: Any) -> None:
        self.kind, self.url, self.sid, self.on_message = kind, url, sid, on_message
        self.conn: Any = None
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self.kind == "socketio":
            import socketio

            client = socketio.AsyncClient(reconnection=False)
            client.on("turbo", self.on_message)
            # The namespace's answer may take longer than the default second while a
            # hundred handshakes arrive at once.
            await client.connect(
                f"{self.url}?room={self.sid}", transports=["websocket"], wait_timeout=60
            )
            self.conn = client
            return
        from websockets.asyncio.client import connect

        if self.kind == "turbocast":
            url, headers = self.url, {"Cookie": turbocast_cookie(self.sid)}
        else:
            url, headers = f"{self.url}?sid={self.sid}", {}
        self.conn = await connect(
            url, additional_headers=headers, compression=None, ping_interval=None,
            max_size=None, open_timeout=60,
        )  # fmt: skip
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.conn:
                self.on_message(message)
        except Exception:  # noqa: BLE001 - a closed socket ends its reader
            return

    async def close(self) -> None:
        if self.kind == "socketio":
            await self.conn.disconnect()
        else:
            await self.conn.close()


async def open_all(spec: dict[str, Any], sids: list[str], on_message: Any) -> list[Client]:
    urls = spec["urls"]
    clients = [
        Client(spec["kind"], urls[i % len(urls)], sid, on_message) for i, sid in enumerate(sids)
    ]
    for start in range(0, len(clients), BATCH):
        await asyncio.gather(*(c.open() for c in clients[start : start + BATCH]))
    return clients


async def collect(spec: dict[str, Any]) -> dict[str, Any]:
    latencies: list[int] = []
    numbers: list[int] = []
    done = asyncio.Event()
    expect = int(spec["expect"])
    first = last = 0.0

    def on_message(text: Any) -> None:
        nonlocal first, last
        n, latency = parse(text)
        now = time.monotonic()
        first = first or now
        last = now
        numbers.append(n)
        latencies.append(latency)
        if len(latencies) >= expect:
            done.set()

    clients = await open_all(spec, spec["sids"], on_message)
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=float(spec["timeout"]))
    # The server's CPU is read now, while every socket (and its threads) still exists.
    print("DONE", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for client in clients:
        await client.close()
    return {
        "received": len(latencies),
        "expected": expect,
        "seconds": last - first,
        "numbers": numbers if spec.get("keep_numbers") else [],
        "latencies_ns": latencies,
    }


async def idle(spec: dict[str, Any]) -> dict[str, Any]:
    """Open sockets in steps; after each step print READY and wait for a line on stdin."""
    clients: list[Client] = []
    loop = asyncio.get_running_loop()
    offset = 0
    for step in spec["steps"]:
        clients += await open_all(spec, spec["sids"][offset : offset + step], lambda _m: None)
        offset += step
        print(f"READY {len(clients)}", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
    for client in clients:
        await client.close()
    return {"sockets": len(clients)}


async def e2e(spec: dict[str, Any]) -> dict[str, Any]:
    """W6: a view enqueues a Celery task; time until its stream reaches the socket."""
    import aiohttp

    sid = spec["sids"][0]
    arrived: asyncio.Queue[str] = asyncio.Queue()
    clients = await open_all(spec, [sid], lambda text: arrived.put_nowait(str(text)))
    print("READY", flush=True)
    latencies = []
    headers = {"Cookie": turbocast_cookie(sid), "Accept": "text/vnd.turbo-stream.html"}
    async with aiohttp.ClientSession() as http:
        for n in range(int(spec["count"])):
            marker = f"e2e-{n}"
            start = time.monotonic_ns()
            async with http.post(spec["notify_url"], data={"text": marker}, headers=headers) as r:
                assert r.status == 200
            while True:
                text = await asyncio.wait_for(arrived.get(), timeout=30)
                if marker + " " in text or marker + "<" in text:
                    latencies.append(time.monotonic_ns() - start)
                    break
    for client in clients:
        await client.close()
    return {"received": len(latencies), "expected": spec["count"], "latencies_ns": latencies}


def main() -> None:
    spec = json.loads(sys.argv[1])
    mode = {"collect": collect, "idle": idle, "e2e": e2e}[spec["mode"]]
    result = asyncio.run(mode(spec))
    lat = [v / 1e6 for v in result.get("latencies_ns", [])]
    result["p50_ms"] = percentile(lat, 50)
    result["p99_ms"] = percentile(lat, 99)
    result["max_ms"] = max(lat) if lat else float("nan")
    if not spec.get("keep_latencies"):
        result.pop("latencies_ns", None)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
