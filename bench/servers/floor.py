"""The floor: a minimal asyncio server relaying Redis pub/sub to the addressed WebSocket.

One process, one event loop, one pub/sub connection subscribed to the channels
of the sockets it holds (and the broadcast channel); ``websockets.broadcast``
writes without awaiting. Nothing more: no auth, no history, no limits. It is
what a well-built single Python process costs, the yardstick for turbocast.

    python -m bench.servers.floor --port 8001 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve

BROADCAST = "floor:broadcast"


class Floor:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.from_url(redis_url)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.sockets: dict[bytes, set[ServerConnection]] = {BROADCAST.encode(): set()}

    async def handler(self, ws: ServerConnection) -> None:
        sid = parse_qs(urlsplit(ws.request.path).query)["sid"][0]
        channel = f"floor:session:{sid}".encode()
        group = self.sockets.setdefault(channel, set())
        if not group:
            await self.pubsub.subscribe(channel)
        group.add(ws)
        self.sockets[BROADCAST.encode()].add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.sockets[BROADCAST.encode()].discard(ws)
            group.discard(ws)
            if not group:
                del self.sockets[channel]
                await self.pubsub.unsubscribe(channel)

    async def relay(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            group = self.sockets.get(message["channel"])
            if group:
                broadcast(group, message["data"].decode())


async def main(port: int, redis_url: str) -> None:
    floor = Floor(redis_url)
    await floor.pubsub.subscribe(BROADCAST)
    async with serve(floor.handler, "127.0.0.1", port, compression=None, ping_interval=None):
        await floor.relay()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.redis))
