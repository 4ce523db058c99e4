"""flask-sock, as its docs show it: what turbocast's own socket handling is measured against.

    REDIS_URL=redis://... gunicorn -w 1 -k gthread --threads 1064 \
        'bench.servers.flasksock_app:create_app()'

The route is flask-sock's documented one (``Sock(app)``, ``@sock.route``,
``SOCK_SERVER_OPTIONS={"ping_interval": 25}``), so every socket is a
``simple_websocket.Server``: the request's thread runs the route and writes, and
simple-websocket starts a reader thread of its own per socket (which also
answers pings and echoes the close frame, i.e. writes to the same socket).

Redis, done the fair way rather than the naive one (a ``PubSub`` connection per
socket): one listener thread per process, on one pub/sub connection, hands each
message to a ``queue.Queue`` per socket, as python-socketio's pub/sub manager
does. Like that manager it subscribes once, when the process starts (a pattern
for the session channels and the broadcast channel), and picks the local
sockets by channel, so no other thread ever touches the pub/sub connection.
(Each process gets every session's messages: fine with the one web process of
W1 and W4, not a fair shape for W5.)

It speaks the floor's protocol (``kind="floor"`` in ``bench.run``): the session
id in the query string (``?sid=``), plain ``PUBLISH`` to ``floor:session:<sid>``
and ``floor:broadcast``, the HTML as a text frame. No auth, no history.
"""

from __future__ import annotations

import os
import queue
import threading

import redis
from flask import Flask, request
from flask_sock import Sock
from simple_websocket import Server

SESSION = "floor:session:"
BROADCAST = "floor:broadcast"
#: How often a waiting route looks whether its socket was closed (only when idle).
IDLE_CHECK = 5.0


class Listener:
    """One pub/sub connection per process; messages go to the queues of its sockets."""

    def __init__(self, redis_url: str) -> None:
        self.pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(SESSION + "*")
        self.pubsub.subscribe(BROADCAST)
        # channel -> queues; values are replaced, never mutated, so the listener
        # iterates them without a lock.
        self.queues: dict[bytes, frozenset[queue.Queue[str]]] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.run, name="redis-listener", daemon=True).start()

    def attach(self, channels: list[bytes], q: queue.Queue[str]) -> None:
        with self.lock:
            for channel in channels:
                self.queues[channel] = self.queues.get(channel, frozenset()) | {q}

    def detach(self, channels: list[bytes], q: queue.Queue[str]) -> None:
        with self.lock:
            for channel in channels:
                rest = self.queues.get(channel, frozenset()) - {q}
                if rest:
                    self.queues[channel] = rest
                else:
                    self.queues.pop(channel, None)

    def run(self) -> None:
        for message in self.pubsub.listen():
            targets = self.queues.get(message["channel"])
            if targets:
                text = message["data"].decode()
                for q in targets:
                    q.put(text)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25}
    sock = Sock(app)
    listener = Listener(os.environ["REDIS_URL"])

    @app.get("/")
    def index() -> str:
        return "flask-sock bench server\n"

    @sock.route("/ws")
    def stream(ws: Server) -> None:
        channels = [(SESSION + request.args["sid"]).encode(), BROADCAST.encode()]
        q: queue.Queue[str] = queue.Queue()
        listener.attach(channels, q)
        try:
            while ws.connected:
                try:
                    text = q.get(timeout=IDLE_CHECK)
                except queue.Empty:
                    continue
                ws.send(text)
        finally:
            listener.detach(channels, q)

    return app
