"""The peer: Flask-SocketIO with its Redis message queue, one room per session.

    SIO_MODE=threading gunicorn -w 1 --threads 1000 'bench.servers.socketio_app:create_app()'
    SIO_MODE=gevent    gunicorn -w 1 -k gevent     'bench.servers.socketio_app:create_app()'

Publishers are external write-only ``SocketIO(message_queue=REDIS_URL)`` emitters.
"""

from __future__ import annotations

import os

from flask import Flask, request
from flask_socketio import SocketIO, join_room


def create_app() -> Flask:
    app = Flask(__name__)
    socketio = SocketIO(
        app,
        message_queue=os.environ["REDIS_URL"],
        async_mode=os.environ.get("SIO_MODE", "threading"),
        cors_allowed_origins="*",
    )

    @socketio.on("connect")
    def connect(auth: object = None) -> None:
        join_room(request.args["room"])  # ("sid" is Engine.IO's own parameter)

    return app
