"""``flask turbo …`` as an operator runs it: a separate process, the test's Redis, a real gunicorn.

Real WebSocket clients on the demo; the CLI runs as ``python -m flask``, with the
environment the web server has.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import simple_websocket

from tests.support import (
    ROOT,
    SECRET_KEY,
    WebServer,
    connect,
    numsub,
    open_session,
    receive,
    session_id_of,
    wait_for,
)
from turbocast import CLOSE_SIGNED_OUT
from turbocast.channels import control_channel


@pytest.fixture(scope="module")
def web(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    server = WebServer(redis_url, workers=1, threads=16).start(log_dir)
    yield server
    server.stop()


def flask_turbo(redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECRET_KEY": SECRET_KEY, "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app:create_app()", "turbo", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def _worker_pid(web: WebServer) -> int:
    pids = re.findall(r"Booting worker with pid: (\d+)", web.log())
    assert pids, web.log()
    return int(pids[-1])


@pytest.fixture
def client(
    web: WebServer, redis_client: redis.Redis
) -> Iterator[tuple[str, simple_websocket.Client]]:
    cookie = open_session(web.base_url)
    ws = connect(web.ws_url, cookie)
    wait_for(lambda: numsub(redis_client, control_channel()) >= 1, what="the relay subscribed")
    yield session_id_of(cookie), ws
    with contextlib.suppress(Exception):
        ws.close()


def test_publish_reaches_the_session_and_history_shows_it(
    web: WebServer, redis_url: str, client: tuple[str, simple_websocket.Client]
) -> None:
    sid, ws = client
    html = (
        '<turbo-stream action="append" target="log">'
        "<template>from-the-cli</template></turbo-stream>"
    )

    result = flask_turbo(redis_url, "publish", "--session", sid, "-", stdin=html)

    assert result.returncode == 0, result.stderr
    assert "1 web process(es) received it" in result.stdout
    wait_for(lambda: "from-the-cli" in receive(ws), what="the published stream on the socket")

    history = flask_turbo(redis_url, "history", f"session:{sid}")
    assert history.returncode == 0, history.stderr
    assert '<turbo-stream action="append" target="log">' in history.stdout
    assert "(1 of 1 entries)" in history.stdout


def test_sockets_asks_the_gunicorn_worker_through_redis(
    web: WebServer, redis_url: str, client: tuple[str, simple_websocket.Client]
) -> None:
    sid, _ws = client

    result = flask_turbo(redis_url, "sockets", "--json")

    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report["pid"] == _worker_pid(web)
    assert report["channels"][f"session:{sid[:8]}…"] == 1
    assert any(s["session"] == f"{sid[:8]}…" for s in report["socket_list"])

    table = flask_turbo(redis_url, "sockets")
    assert table.returncode == 0, table.stderr
    assert f"pid {report['pid']}: " in table.stdout
    assert f"session:{sid[:8]}…" in table.stdout


def test_disconnect_closes_the_session_socket_with_4003(
    web: WebServer, redis_url: str, client: tuple[str, simple_websocket.Client]
) -> None:
    sid, ws = client

    result = flask_turbo(redis_url, "disconnect", "--session", sid)

    assert result.returncode == 0, result.stderr
    assert "1 web process(es) received it" in result.stdout
    with pytest.raises(simple_websocket.ConnectionClosed):
        while ws.receive(timeout=10) is not None:
            pass
    assert ws.close_reason == CLOSE_SIGNED_OUT


def test_publishing_text_that_is_no_turbo_stream_exits_2_with_the_reason(
    redis_url: str,
) -> None:
    result = flask_turbo(redis_url, "publish", "--all", "-", stdin="<p>hello</p>")

    assert result.returncode == 2
    assert "not Turbo Stream HTML: <p> outside a <turbo-stream> element" in result.stderr
    assert "Traceback" not in result.stderr
