"""What the benchmark's processes share: messages, addresses, process statistics."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECRET_KEY = "bench-secret-key"
PAD = "x" * 180
_MESSAGE_RE = re.compile(rb'data-n="(\d+)" data-t="(\d+)"')


def library_cli(
    doc: str,
    results: Callable[[], dict[str, Any]],
    table: Callable[[dict[str, Any]], list[str]],
) -> None:
    """The command line of a workload measured without a server: its table, or its JSON
    (``--json``, as ``make bench`` records it)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="ignored: the run is short anyway")
    as_json = parser.parse_args().json
    result = results()
    print(json.dumps(result) if as_json else "\n".join(table(result)))


def message_html(n: int) -> str:
    """A ~300-byte Turbo Stream carrying its number and its send time (CLOCK_MONOTONIC ns)."""
    return (
        '<turbo-stream action="append" target="log"><template>'
        f'<p data-n="{n}" data-t="{time.monotonic_ns()}">{PAD}</p>'
        "</template></turbo-stream>"
    )


def parse(data: str | bytes) -> tuple[int, int]:
    """``(n, latency_ns)`` of a received message."""
    raw = data.encode() if isinstance(data, str) else data
    match = _MESSAGE_RE.search(raw)
    if match is None:
        raise ValueError(f"not a benchmark message: {raw[:80]!r}")
    return int(match.group(1)), time.monotonic_ns() - int(match.group(2))


def new_sids(count: int) -> list[str]:
    return [secrets.token_urlsafe(24) for _ in range(count)]


def turbocast_cookie(sid: str) -> str:
    """A session cookie as the app signs it (the benchmark knows the secret)."""
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask("bench")
    app.secret_key = SECRET_KEY
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return f"session={serializer.dumps({'turbo_sid': sid})}"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def tree(pids: list[int]) -> list[int]:
    """The processes and all their descendants."""
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(_children(pid))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the process trees, every thread, in seconds.

    From each thread's ``schedstat`` (nanoseconds actually run), not the
    tick-sampled ``utime``/``stime``, which miscount processes that run in many
    short bursts, as a server waking for each message does. (A thread that
    exited during the window is not counted; none do while sockets are open.)
    """
    total = 0
    for pid in tree(pids):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def rss_kib(pids: list[int]) -> int:
    """Resident memory of the process trees, KiB."""
    total = 0
    for pid in tree(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
