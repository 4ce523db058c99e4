"""Helpers shared by the integration tests: real servers, real clients, deadline waits."""

from __future__ import annotations

import base64
import contextlib
import html
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import simple_websocket
import trustme
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from app.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "integration-test-secret"
T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    ``sleep`` waits between polls; Playwright's sync API needs its own, which lets
    browser events arrive meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        sleep(interval)


def from_relay(outbox: Any, message: Any, timeout: float = 5.0) -> bool:
    """``outbox.put(message)`` from a thread of its own, as the relay does (an outbox's write
    turn is a thread's: the test's own thread may hold it); whether it was taken."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(outbox.put(message)))
    thread.start()
    thread.join(timeout)
    return result == [True]


def numsub(redis_client: Any, channel: str) -> int:
    """How many connections are subscribed to ``channel``."""
    return int(redis_client.pubsub_numsub(channel)[0][1])


def copy_checkout(tmp: Path) -> Path:
    """Copy this checkout to ``tmp/source`` for a build, without what a build leaves behind.

    setuptools keeps build/ between runs, and a stale build/lib ends up in wheels. Links
    stay links: static/turbo.js leads into the copy's node_modules.
    """
    anywhere = shutil.ignore_patterns(".*", "*.egg-info", "__pycache__")
    at_the_top = {"build", "dist", "instance"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        # Not node_modules/@hotwired/turbo/dist: that is Turbo.
        top = at_the_top & set(names) if Path(directory) == ROOT else set()
        return set(anywhere(directory, names)) | top

    return Path(shutil.copytree(ROOT, tmp / "source", symlinks=True, ignore=ignore))


def build(source: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``python -m build`` the project at ``source`` into ``source.parent / "dist"``.

    No isolation: the test extra installs the build backend, so no index is needed.
    """
    command = [sys.executable, "-m", "build", *options, "--no-isolation", "--outdir", "dist"]
    return subprocess.run(
        [*command, str(source)], cwd=source.parent, capture_output=True, text=True, timeout=180
    )


@dataclass(frozen=True)
class Distributions:
    """What ``python -m build`` made of this checkout: the sdist, and the wheel built from it."""

    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Runtime:
    """Which Python runs a managed process, in which directory, on which environment.

    The default is this checkout: the test run's Python, in the repository, with the
    test run's environment. The wheel test runs an installed project instead: another
    virtualenv's Python, in a directory outside the repository, with a clean environment.
    """

    python: str = sys.executable
    cwd: Path = ROOT
    #: The environment the process starts from; ``None``: the test run's.
    env: Mapping[str, str] | None = None


class ManagedProcess:
    """A child process of the test run with its output in a log file."""

    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    runtime: Runtime = Runtime()

    def _spawn(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        base = os.environ if self.runtime.env is None else self.runtime.env
        full_env = {**base, "SECRET_KEY": SECRET_KEY, "PYTHONUNBUFFERED": "1", **env}
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, cwd=self.runtime.cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )

    def _check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.process.args} exited early:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class Certificates:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost, as PEM files."""

    ca: trustme.CA
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = directory / "cert.pem", directory / "key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))  # leaf first
        leaf.private_key_pem.write_to_path(str(key))
        return cls(ca, cert, key)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def http_connection(
    base_url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0
) -> http.client.HTTPConnection:
    """A connection to ``base_url``'s host: HTTPS, trusting ``context``, for https://."""
    parts = urlsplit(base_url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context
        )
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def demo_database(log_dir: Path) -> str:
    """The demo's database for the servers of one test module: SQLite beside their logs,
    never the checkout's instance/demo.sqlite (``DATABASE_URL`` in their env wins)."""
    return f"sqlite:///{log_dir}/demo.sqlite"


@dataclass
class WebServer(ManagedProcess):
    """A real gunicorn serving ``app:create_app()`` in its own process: the demo's by default."""

    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    threads: int = 64
    port: int = 0
    #: gunicorn's worker class: ``gthread`` (the default serving mode) or ``gevent``.
    worker_class: str = "gthread"
    #: With certificates gunicorn ends TLS itself (``--certfile``): https:// and wss://.
    certificates: Certificates | None = None
    runtime: Runtime = field(default_factory=Runtime)
    #: The address gunicorn binds, and clients connect to.
    host: str = "127.0.0.1"
    #: What the command runs under, e.g. ``("ip", "netns", "exec", name)``: another host.
    command_prefix: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.certificates else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.certificates else "ws"
        return f"{scheme}://{self.host}:{self.port}/turbo-stream"

    def client_context(self) -> ssl.SSLContext | None:
        """A client context that trusts the server's certificate; ``None`` without TLS."""
        return self.certificates.client_context() if self.certificates else None

    def start(self, log_dir: Path) -> WebServer:
        self.port = self.port or free_port()
        tls = self.certificates
        name = f"{'' if self.host == '127.0.0.1' else self.host + '-'}{self.port}"
        self._spawn(
            [
                *self.command_prefix,
                self.runtime.python, "-m", "gunicorn",
                "-c", "python:turbocast.gunicorn_hooks",
                "--bind", f"{self.host}:{self.port}",
                *(["--certfile", str(tls.cert), "--keyfile", str(tls.key)] if tls else []),
                "--workers", str(self.workers),
                "--threads", str(self.threads),
                "--worker-class", self.worker_class,
                "--graceful-timeout", "3",
                "--log-level", "info",
                "--no-control-socket",
                "app:create_app()",
            ],
            log_dir / f"gunicorn-{'tls-' if tls else ''}{name}.log",
            {"REDIS_URL": self.redis_url, "DATABASE_URL": demo_database(log_dir), **self.env},
        )  # fmt: skip
        wait_for(self._answers, timeout=30, what=f"gunicorn on {self.base_url}")
        return self

    def _answers(self) -> bool:
        self._check_running()
        conn = http_connection(self.base_url, self.client_context(), timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


def open_session(base_url: str, context: ssl.SSLContext | None = None) -> str:
    """GET the home page as a new browser would; return the ``Cookie`` header to send back.

    :param context: for an https:// ``base_url``, the client context that trusts its server.
    """
    conn = http_connection(base_url, context)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200
    cookies = [v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
    assert cookies, "the first request must set a session cookie"
    return "; ".join(cookies)


def session_id_of(cookie_header: str, secret_key: str = SECRET_KEY) -> str:
    """Decode the turbocast session id from a signed Flask session cookie."""
    app = Flask("decode")
    app.secret_key = secret_key
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    value = dict(p.split("=", 1) for p in cookie_header.split("; "))["session"]
    return str(serializer.loads(value)["turbo_sid"])


def forge_cookie(data: dict[str, Any], secret_key: str) -> str:
    """Sign ``data`` as a Flask session cookie with ``secret_key``."""
    app = Flask("forge")
    app.secret_key = secret_key
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return f"session={serializer.dumps(data)}"


class Client(simple_websocket.Client):  # type: ignore[misc]
    """simple-websocket's client, taking the frames that came with the 101 too.

    Its handshake takes only the first event from what it read, the 101; frames
    that arrived in the same read (the server sends a replay right after the 101)
    stay in wsproto's buffer until more bytes come. A browser reads them at once;
    so does this client.
    """

    def handshake(self) -> None:
        super().handshake()
        self.connected = self._handle_events()


def connect(ws_url: str, cookie: str | None, origin: str | None = None) -> simple_websocket.Client:
    """Open a real WebSocket to the stream endpoint (raises ConnectionError when refused)."""
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    if origin:
        headers["Origin"] = origin
    return Client.connect(ws_url, headers=headers)


def handshake_status(ws_url: str, cookie: str | None, origin: str | None = None) -> int:
    """Send a WebSocket upgrade request; return the HTTP status (101 when accepted)."""
    parts = urlsplit(ws_url)
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if cookie:
        headers["Cookie"] = cookie
    if origin:
        headers["Origin"] = origin
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def receive(ws: simple_websocket.Client, timeout: float = 10.0) -> str:
    """The next message, or fail after ``timeout`` seconds."""
    message = ws.receive(timeout=timeout)
    if message is None:
        raise AssertionError(f"no message within {timeout}s")
    return str(message)


class RawClient:
    """A WebSocket client on a bare socket, which reads only when told to.

    simple-websocket's client reads in a background thread; this one lets a
    test leave the TCP window full, as a stalled browser would.
    """

    def __init__(
        self, ws_url: str, cookie: str, rcvbuf: int = 4096, extensions: Sequence[Any] = ()
    ) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=parts.netloc,
                    target=parts.path,
                    extra_headers=[(b"cookie", cookie.encode())],
                    extensions=list(extensions),
                )
            )
        )
        self.events: list[Any] = []
        #: Bytes read off the socket after the 101 (what crossed the wire).
        self.received_bytes = 0
        while not any(isinstance(e, AcceptConnection) for e in self.events):
            self._pump()
        self.received_bytes = 0  # (the 101, and perhaps a first frame, counted from here on)

    def _pump(self) -> bool:
        data = self.sock.recv(65536)
        self.received_bytes += len(data)
        self.ws.receive_data(data or None)
        self.events.extend(self.ws.events())
        return bool(data)

    def read_until_closed(self, timeout: float = 30.0) -> tuple[list[str], CloseConnection | None]:
        """Read everything until the server closes; return the messages and the close event."""
        self.sock.settimeout(timeout)
        messages: list[str] = []
        partial = ""
        while True:
            for event in self.events:
                if isinstance(event, TextMessage):
                    partial += event.data
                    if event.message_finished:
                        messages.append(partial)
                        partial = ""
                elif isinstance(event, CloseConnection):
                    return messages, event
            self.events = []
            if not self._pump():
                return messages, None

    def pings(self, count: int, answer: bool, timeout: float = 10.0) -> int:
        """Read until ``count`` pings came (answering them or not) or the server hung up.

        :returns: how many pings came.
        """
        self.sock.settimeout(timeout)
        seen = 0
        while seen < count:
            for event in self.events:
                if isinstance(event, Ping):
                    seen += 1
                    if answer:
                        self.sock.sendall(self.ws.send(event.response()))
            self.events = []
            if seen >= count or not self._pump():
                break
        return seen

    def close(self) -> None:
        self.sock.close()


@dataclass
class CeleryProcess(ManagedProcess):
    """A real ``celery -A <app> worker`` (or ``beat``) in its own process: the demo's by default."""

    redis_url: str
    command: str = "worker"
    env: dict[str, str] = field(default_factory=dict)
    #: The Celery app (``celery -A``).
    app: str = "workers.celery"
    runtime: Runtime = field(default_factory=Runtime)

    def start(self, log_dir: Path) -> CeleryProcess:
        args = [self.runtime.python, "-m", "celery", "-A", self.app, self.command, "-l", "INFO"]
        if self.command == "worker":
            args += ["--concurrency", "2", "--without-gossip", "--without-mingle"]
            ready = "ready."
        else:
            args += ["--schedule", str(log_dir / f"beat-schedule-{id(self)}")]
            ready = "beat: Starting..."
        log_path = log_dir / f"celery-{self.command}-{id(self)}.log"
        env = {"REDIS_URL": self.redis_url, "DATABASE_URL": demo_database(log_dir), **self.env}
        self._spawn(args, log_path, env)
        wait_for(lambda: self._ready(ready), timeout=60, what=f"celery {self.command} to start")
        return self

    def _ready(self, marker: str) -> bool:
        self._check_running()
        return marker in self.log()


@contextlib.contextmanager
def demo_stack(redis_url: str, log_dir: Path, env: dict[str, str]) -> Iterator[WebServer]:
    """The demo as `make run` runs it: gunicorn, a Celery worker and beat, on ``redis_url``."""
    web = WebServer(redis_url, env=env).start(log_dir)
    worker = CeleryProcess(redis_url, "worker", env=env)
    beat = CeleryProcess(redis_url, "beat", env=env)
    try:
        worker.start(log_dir)
        beat.start(log_dir)
        yield web
    finally:
        beat.stop()
        worker.stop()
        web.stop()


def post(base_url: str, path: str, cookie: str, form: dict[str, str] | None = None) -> str:
    """POST a form the way Turbo submits it (asking for Turbo Streams); return the body."""
    parts = urlsplit(base_url)
    body = "&".join(f"{k}={v}" for k, v in (form or {}).items())
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Cookie": cookie,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "text/vnd.turbo-stream.html, text/html, application/xhtml+xml",
            },
        )
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, (response.status, text)
    return text


def _request(
    base_url: str, method: str, path: str, cookie: str | None, body: str = ""
) -> tuple[int, dict[str, str], str, str | None]:
    """One HTTP request; returns status, headers, body and the updated ``Cookie`` header."""
    parts = urlsplit(base_url)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        set_cookie = [
            v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie"
        ]
        return response.status, dict(response.getheaders()), text, "; ".join(set_cookie) or cookie
    finally:
        conn.close()


def login(base_url: str, cookie: str, name: str) -> str:
    """Sign the session in as ``name`` through the demo's form; return the new cookie."""
    status, _, body, new_cookie = _request(base_url, "POST", "/login", cookie, f"name={name}")
    assert status == 303, (status, body)
    assert new_cookie and new_cookie != cookie
    return new_cookie


def page_stream_url(base_url: str, path: str, cookie: str) -> str:
    """The ``src`` of the ``<turbo-stream-source>`` that a page renders for this session."""
    status, _, body, _ = _request(base_url, "GET", path, cookie)
    assert status == 200, status
    match = re.search(r'<turbo(?:cast)?-stream-source src="([^"]+)"', body)
    assert match, body[:500]
    return html.unescape(match.group(1))


class ResumingClient:
    """A client of the ``turbocast.v1`` protocol, as ``<turbocast-stream-source>`` speaks it.

    It keeps the last id of every label and reconnects with them as ``since=``, and
    the socket id the server tells it first (``i <id>``), sent back as ``socket=``
    unless ``keep_socket_id`` is false.
    """

    def __init__(self, url: str, cookie: str) -> None:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "since"]
        self.base = parts._replace(query="").geturl()
        self.query = query
        self.positions = dict(v.split("~", 1) for k, v in parse_qsl(parts.query) if k == "since")
        self.cookie = cookie
        self.ws: simple_websocket.Client | None = None
        #: (kind, label, id, html) of everything received, across reconnects.
        self.received: list[tuple[str, str, str, str]] = []
        #: The id the server gave this client's socket (``i <id>``), once told.
        self.socket_id: str | None = None
        self.keep_socket_id = True

    def url(self) -> str:
        since = [("since", f"{label}~{pos}") for label, pos in self.positions.items()]
        socket_id = [("socket", self.socket_id)] if self.socket_id and self.keep_socket_id else []
        return f"{self.base}?{urlencode(self.query + since + socket_id)}"

    def connect(self) -> ResumingClient:
        """Open the socket and read the socket id the server tells first."""
        self.ws = Client.connect(
            self.url(), subprotocols=["turbocast.v1"], headers={"Cookie": self.cookie}
        )
        assert self.ws.subprotocol == "turbocast.v1"
        data = self.ws.receive(timeout=10)
        assert data is not None, "no socket id within 10s"
        kind, _, socket_id = str(data).rstrip("\n").partition(" ")
        assert kind == "i", data
        self.socket_id = socket_id
        return self

    def next(self, timeout: float = 10.0) -> tuple[str, str, str, str]:
        """The next message: ``(kind, label, id, html)``; advances the position."""
        assert self.ws is not None
        data = self.ws.receive(timeout=timeout)
        if data is None:
            raise AssertionError(f"no message within {timeout}s")
        head, _, html = str(data).partition("\n")
        kind, label, message_id = head.split(" ")
        if message_id != "-":
            self.positions[label] = message_id
        self.received.append((kind, label, message_id, html))
        return kind, label, message_id, html

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


def postgres_bin() -> Path:
    """The directory of Debian's PostgreSQL server programs (initdb, postgres): the newest."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise AssertionError("PostgreSQL not found: `make test` installs Debian's postgresql")
    return found[-1].parent


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``initdb`` in a temporary directory, on a free port.

    Never the machine's own server: its data, port and socket are its own, and it is gone
    when stopped. PostgreSQL refuses to run as root; as root, it runs as ``nobody``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="turbocast-pg-"))
        self.process: subprocess.Popen[bytes] | None = None

    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return args
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args]

    def start(self) -> PostgresServer:
        binaries = postgres_bin()
        data = self.directory / "data"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "nobody", "nogroup")
        init = subprocess.run(
            self._as_owner(
                [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "--no-sync", "-E", "UTF8", "--locale=C"]
            ),
            cwd=self.directory, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115 - the server's
        self.process = subprocess.Popen(
            self._as_owner(
                [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "max_connections=200"]
            ),
            cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_for(self._accepts, timeout=60, what=f"PostgreSQL on port {self.port}")
        return self

    def _accepts(self) -> bool:
        import psycopg

        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited early:\n{self.log()}")
        try:
            psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres", connect_timeout=2
            ).close()
        except psycopg.OperationalError:
            return False
        return True

    def log(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """A fast shutdown (SIGINT), then the directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
