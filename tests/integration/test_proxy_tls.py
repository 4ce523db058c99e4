"""The production recipe, for real: nginx from docs/deploy/nginx.conf.template ends TLS in
front of gunicorn, and keeps slow clients (slowloris) away from gunicorn's threads."""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import simple_websocket
from markupsafe import Markup

from app.embedded_redis import free_port
from tests.support import (
    ROOT,
    Certificates,
    ManagedProcess,
    WebServer,
    numsub,
    receive,
    session_id_of,
    wait_for,
)
from turbocast import TurboStream, channel_for

TEMPLATE = ROOT / "docs" / "deploy" / "nginx.conf.template"
#: ``${NAME}`` as the official image's envsubst replaces it; nginx's own ``$name`` stays.
_TEMPLATE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Half-open requests each slowloris run holds, and the threads gunicorn gets.
HALF_OPEN = 200
THREADS = 8


def nginx_binary() -> str:
    """Debian's nginx (``make test`` installs it); fail, never skip, when it is missing."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx not found: `make test` installs Debian's nginx")
    return found


def render_template(values: dict[str, str]) -> str:
    """The template with its ``${VARS}`` substituted, as the official image does it."""
    text = TEMPLATE.read_text()
    used = set(_TEMPLATE_VAR.findall(text))
    assert used == set(values), f"the template uses {sorted(used)}, given {sorted(values)}"
    return _TEMPLATE_VAR.sub(lambda m: values[m.group(1)], text)


@dataclass
class Nginx(ManagedProcess):
    """Debian's nginx running the deploy template, in the foreground, on a free port."""

    upstream: str = ""
    certificates: Certificates | None = None
    idle_timeout: str = "75s"
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/turbo-stream"

    def start(self, log_dir: Path) -> Nginx:
        assert self.certificates is not None
        self.port = self.port or free_port()
        prefix = log_dir / f"nginx-{self.port}"
        (prefix / "temp").mkdir(parents=True, exist_ok=True)
        site = render_template(
            {
                "TURBO_UPSTREAM": self.upstream,
                "NGINX_LISTEN": f"127.0.0.1:{self.port}",
                "NGINX_TLS_CERTIFICATE": str(self.certificates.cert),
                "NGINX_TLS_CERTIFICATE_KEY": str(self.certificates.key),
                "TURBO_STREAM_IDLE_TIMEOUT": self.idle_timeout,
            }
        )
        (prefix / "turbocast.conf").write_text(site)
        # The official image's nginx.conf, cut down: one process (as whoever runs the
        # tests, so it can use the pytest temp dirs), logs to our log file.
        temp = prefix / "temp"
        (prefix / "nginx.conf").write_text(
            f"""
            daemon off;
            master_process off;
            worker_processes 1;
            pid {prefix}/nginx.pid;
            error_log stderr notice;
            events {{ worker_connections 1024; }}
            http {{
                access_log {prefix}/access.log;
                client_body_temp_path {temp}/body;
                proxy_temp_path {temp}/proxy;
                fastcgi_temp_path {temp}/fastcgi;
                uwsgi_temp_path {temp}/uwsgi;
                scgi_temp_path {temp}/scgi;
                include {prefix}/turbocast.conf;
            }}
            """
        )
        args = [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"]
        self._spawn(args, log_dir / f"nginx-{self.port}.log", {})
        wait_for(self._answers, timeout=15, what=f"nginx on port {self.port}")
        return self

    def _answers(self) -> bool:
        self._check_running()
        try:
            return https_request(self.port, self.context(), "GET", "/healthz")[0] == 200
        except OSError:
            return False

    def context(self) -> ssl.SSLContext:
        assert self.certificates is not None
        return self.certificates.client_context()


def https_request(
    port: int,
    context: ssl.SSLContext,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, list[tuple[str, str]], str]:
    """One request over TLS to 127.0.0.1:``port``; returns status, headers and body."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read().decode()
    finally:
        conn.close()


def open_tls_session(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """GET the home page over TLS as a new browser would: the ``Cookie`` to send back and
    the page's stream source URL."""
    status, headers, body = https_request(port, context, "GET", "/")
    assert status == 200, (status, body[:300])
    cookies = [v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie"]
    assert cookies, "the first request must set a session cookie"
    match = re.search(r'<turbo(?:cast)?-stream-source src="([^"]+)"', body)
    assert match, body[:500]
    return "; ".join(cookies), match.group(1).replace("&amp;", "&")


class _BrowserLikeClient(simple_websocket.Client):  # type: ignore[misc]
    # simple-websocket sends "Host: 127.0.0.1" without the port; a browser sends the
    # port, and the app checks the page's Origin against the host it was asked for.
    def handshake(self) -> None:
        self.host: str = f"{self.host}:{self.port}"
        super().handshake()


def connect_wss(
    url: str, cookie: str, origin: str, context: ssl.SSLContext
) -> simple_websocket.Client:
    """A wss:// socket as a page of ``origin`` opens it."""
    return _BrowserLikeClient.connect(
        url, headers={"Cookie": cookie, "Origin": origin}, ssl_context=context
    )


def _note(text: str) -> TurboStream:
    return TurboStream.append("notifications", Markup("<li>{}</li>").format(text))


class HalfOpenRequests:
    """Slowloris: connections that each send part of a request's headers, then hold.

    :param tls: a context to speak TLS first (to nginx), or ``None`` for plain TCP.
    """

    def __init__(self, port: int, count: int, tls: ssl.SSLContext | None = None) -> None:
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
                self.sockets.append(sock)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
        except BaseException:
            self.close()
            raise

    def still_open(self) -> int:
        """How many the server still holds (it neither answered nor hung up)."""
        held = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                sock.recv(1)  # b"": the server hung up; a byte: it answered (408, 400)
            except (ssl.SSLWantReadError, BlockingIOError):
                held += 1  # nothing to read yet: still waiting for the rest of the headers
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return held

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []


@pytest.fixture(scope="module")
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """gunicorn, threaded, with few threads: slowloris could tie them all up."""
    server = WebServer(
        redis_url,
        threads=THREADS,
        env={"TURBO_TRUSTED_PROXIES": "1", "TURBO_PING_INTERVAL": "1"},
    ).start(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(web: WebServer, certificates: Certificates, log_dir: Path) -> Iterator[Nginx]:
    """nginx in front of ``web``; streams silent for 3 s are cut (the app pings every 1 s)."""
    server = Nginx(
        upstream=f"127.0.0.1:{web.port}", certificates=certificates, idle_timeout="3s"
    ).start(log_dir)
    yield server
    server.stop()


def test_the_page_through_nginx_renders_a_wss_stream_url_for_the_host_the_browser_used(proxy):
    cookie, src = open_tls_session(proxy.port, proxy.context())
    assert src.startswith(f"wss://127.0.0.1:{proxy.port}/turbo-stream"), src
    assert session_id_of(cookie)


def test_nginx_keeps_the_metrics_off_the_internet(proxy):
    assert https_request(proxy.port, proxy.context(), "GET", "/metrics")[0] == 404


def test_a_wss_socket_through_nginx_receives_a_push(proxy, publisher, redis_client):
    cookie, src = open_tls_session(proxy.port, proxy.context())
    sid = session_id_of(cookie)
    ws = connect_wss(src, cookie, proxy.base_url, proxy.context())
    try:
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
        publisher.to_session(sid, _note("through nginx"))
        assert "through nginx" in receive(ws)
    finally:
        ws.close()


def test_server_sent_events_through_nginx_arrive_as_they_are_sent(proxy, publisher, redis_client):
    context = proxy.context()
    cookie, src = open_tls_session(proxy.port, context)
    sid = session_id_of(cookie)
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, timeout=5, context=context)
    try:
        conn.request(
            "GET",
            f"/turbo-stream/events?{src.partition('?')[2]}",
            headers={"Cookie": cookie, "Accept": "text/event-stream"},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
        publisher.to_session(sid, _note("as an event"))
        deadline = time.monotonic() + 5
        line = b""
        while b"as an event" not in line:  # each read is bounded by the 5 s socket timeout
            assert time.monotonic() < deadline, "the event did not come through"
            line = response.readline()
            assert line, "the stream ended"
    finally:
        conn.close()


def test_the_recipe_serves_gevent_workers_too(
    redis_url, certificates, log_dir, publisher, redis_client
):
    web = WebServer(redis_url, worker_class="gevent", env={"TURBO_TRUSTED_PROXIES": "1"})
    proxy = Nginx(certificates=certificates)
    try:
        web.start(log_dir)
        proxy.upstream = f"127.0.0.1:{web.port}"
        proxy.start(log_dir)
        cookie, src = open_tls_session(proxy.port, proxy.context())
        assert src.startswith(f"wss://127.0.0.1:{proxy.port}/turbo-stream"), src
        sid = session_id_of(cookie)
        ws = connect_wss(src, cookie, proxy.base_url, proxy.context())
        try:
            wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
            publisher.to_session(sid, _note("through nginx to gevent"))
            assert "through nginx to gevent" in receive(ws)
        finally:
            ws.close()
    finally:
        proxy.stop()
        web.stop()


def test_heartbeats_keep_an_idle_socket_open_past_the_proxy_idle_timeout(
    proxy, publisher, redis_client
):
    """nginx cuts a stream silent for 3 s; the app's pings (every 1 s) keep it busy."""
    cookie, src = open_tls_session(proxy.port, proxy.context())
    sid = session_id_of(cookie)
    ws = connect_wss(src, cookie, proxy.base_url, proxy.context())
    try:
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
        idle_until = time.monotonic() + 4.5  # half again the proxy's idle timeout
        wait_for(lambda: time.monotonic() > idle_until, timeout=10, interval=0.25)
        assert ws.connected
        publisher.to_session(sid, _note("after 4.5 s of silence"))
        assert "after 4.5 s of silence" in receive(ws)
    finally:
        ws.close()


def test_without_heartbeats_nginx_cuts_an_idle_socket(
    redis_url, certificates, log_dir, redis_client
):
    """The contrast: the same proxy, pings off; the idle timeout is real."""
    web = WebServer(
        redis_url, threads=THREADS, env={"TURBO_TRUSTED_PROXIES": "1", "TURBO_PING_INTERVAL": "0"}
    ).start(log_dir)
    proxy = Nginx(upstream=f"127.0.0.1:{web.port}", certificates=certificates, idle_timeout="2s")
    try:
        proxy.start(log_dir)
        cookie, src = open_tls_session(proxy.port, proxy.context())
        sid = session_id_of(cookie)
        ws = connect_wss(src, cookie, proxy.base_url, proxy.context())
        wait_for(lambda: numsub(redis_client, channel_for(sid)) >= 1, what="the subscription")
        opened = time.monotonic()
        wait_for(lambda: not ws.connected, timeout=10, what="nginx to cut the silent socket")
        assert time.monotonic() - opened >= 1.5
        with contextlib.suppress(simple_websocket.ConnectionClosed):
            ws.close()  # already closed by nginx (1005: no close frame)
    finally:
        proxy.stop()
        web.stop()


def test_behind_nginx_slowloris_leaves_gunicorn_free(proxy, web, publisher, redis_client):
    """200 half-open requests wait in nginx; gunicorn's 8 threads never see them."""
    context = proxy.context()
    slow = HalfOpenRequests(proxy.port, HALF_OPEN, tls=context)
    try:
        # New pages, sockets and pushes still go through, several at once.
        sockets = []
        for _ in range(3):
            cookie, src = open_tls_session(proxy.port, context)
            sid = session_id_of(cookie)
            sockets.append((sid, connect_wss(src, cookie, proxy.base_url, context)))
        for sid, ws in sockets:
            channel = channel_for(sid)
            wait_for(lambda: numsub(redis_client, channel) >= 1, what="the subscription")  # noqa: B023
            publisher.to_session(sid, _note(f"for {sid[:6]}"))
            assert f"for {sid[:6]}" in receive(ws, timeout=5)
        assert https_request(proxy.port, context, "GET", "/healthz", timeout=3)[0] == 200
        # ... while nginx was holding every one of the half-open requests.
        assert slow.still_open() == HALF_OPEN
        for _, ws in sockets:
            ws.close()
    finally:
        slow.close()


def test_straight_to_gunicorn_slowloris_starves_it(web):
    """The contrast: the same 200 half-open requests, no nginx; a new request times out."""
    slow = HalfOpenRequests(web.port, HALF_OPEN)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=3)
        with pytest.raises(TimeoutError):
            conn.request("GET", "/healthz")
            conn.getresponse()
        conn.close()
        assert slow.still_open() == HALF_OPEN
    finally:
        slow.close()
    # Once the slow clients go, gunicorn serves again.
    wait_for(web._answers, timeout=15, what="gunicorn to recover")
