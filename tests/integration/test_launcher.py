"""`make run`'s launcher: every process starts, the page answers, one SIGINT stops them all."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from app.embedded_redis import free_port
from tests.support import ROOT, wait_for


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdlines(pids: set[int]) -> str:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return "\n".join(lines)


def _page_answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status == 200 and b"-stream-source src=" in response.read()
    except OSError:
        return False
    finally:
        conn.close()


def _metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, body[:500]
    return body


def _multiproc_dir(output: str) -> str | None:
    match = re.search(r"metrics of the web workers in (\S+)", output)
    return match.group(1) if match else None


def test_launcher_starts_everything_and_one_sigint_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SECRET_KEY")}
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        # Its own session, like a terminal's foreground job: Ctrl-C signals the group.
        launcher = subprocess.Popen(
            [sys.executable, "-m", "app.launcher", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _page_answers(port), timeout=60, what="the demo page")
        output = lambda: log_path.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "celery@" in output() and "beat: Starting" in output(), timeout=60)
        processes = _descendants(launcher.pid)
        commands = _cmdlines(processes)
        for expected in (
            "redis-server",
            "gunicorn",
            "workers.celery worker",
            "workers.celery beat",
        ):
            assert expected in commands, f"{expected} not running:\n{commands}"
        # The web process's workers write their metrics to a directory the launcher made,
        # and /metrics answers for every worker (prometheus-client's multiprocess mode).
        metrics = _metrics(port)
        assert "turbocast_relay_connected" in metrics and "pid=" in metrics, metrics[:500]
        made = _multiproc_dir(log_path.read_text(errors="replace"))
        assert made is not None and Path(made).is_dir()

        os.killpg(launcher.pid, signal.SIGINT)
        # 128 + SIGINT, as for any program stopped with Ctrl-C.
        assert launcher.wait(timeout=60) == 130
        wait_for(
            lambda: not any(_alive(pid) for pid in processes),
            timeout=30,
            what="every launched process to exit",
        )
        assert "embedded Redis stopped" in output()
        assert not Path(made).exists(), "the metrics directory outlives the launcher"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
