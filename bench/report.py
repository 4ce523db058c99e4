"""Turn bench/results/run-*.json into bench/BENCHMARKS.md and its plots.

python -m bench.report [--results bench/results] [--out bench]
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

ROOT = Path(__file__).resolve().parent

COLORS = {
    "turbocast-threads": "#3f63d9",
    "turbocast-gevent": "#7b95e6",
    "floor": "#333333",
    "socketio-threads": "#d9653f",
    "socketio-gevent": "#e6a07b",
}


def load(results: Path) -> list[dict[str, Any]]:
    runs = sorted(results.glob("run-*.json"))
    if not runs:
        raise SystemExit(f"no results in {results}: run `python -m bench.run` first")
    return [json.loads(p.read_text()) for p in runs]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def get(run: dict[str, Any], workload: str, target: str) -> dict[str, Any]:
    return run["workloads"].get(workload, {}).get(target, {})


def both(runs: list[dict[str, Any]], workload: str, target: str, key: str, d: int = 1) -> str:
    return " / ".join(fmt(get(r, workload, target).get(key), d) for r in runs)


def ratio(runs: list[dict[str, Any]], workload: str, a: str, b: str, key: str) -> str:
    out = []
    for r in runs:
        x, y = get(r, workload, a).get(key), get(r, workload, b).get(key)
        out.append(f"{x / y:.2f}×" if x and y else "—")
    return " / ".join(out)


def targets(runs: list[dict[str, Any]], workload: str) -> list[str]:
    names: list[str] = []
    for r in runs:
        for name in r["workloads"].get(workload, {}):
            if name not in names:
                names.append(name)
    return names


def plot_w1(runs: list[dict[str, Any]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in targets(runs, "W1"):
        lat = sorted(v / 1e6 for v in get(runs[0], "W1", name).get("latencies_ns", []))
        if lat:
            ax.plot(lat, [i / len(lat) for i in range(len(lat))], label=name,
                    color=COLORS.get(name))  # fmt: skip
    ax.set_xscale("log")
    # Plain numbers at chosen ticks: the default minor labels overlap on this range.
    ticks = [0.2, 0.3, 0.5, 1, 2, 5, 10, 20]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency, publish → socket (ms, log scale)")
    ax.set_ylabel("fraction of messages")
    ax.set_title("W1: 200 sockets, 500 targeted msgs/s (run 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "w1-latency-cdf.png", dpi=110)
    plt.close(fig)


def plot_bars(
    runs: list[dict[str, Any]], workload: str, key: str, label: str, title: str, path: Path
) -> None:
    names = targets(runs, workload)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        values = [get(r, workload, n).get(key) or 0 for n in names]
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, values, width, label=f"run {i + 1}",
               color=[COLORS.get(n, "#888") for n in names], alpha=1 - 0.35 * i)  # fmt: skip
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=15)
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | target | server CPU µs / delivered msg | latency p50 / p99 / max (ms) | "
        "other | loss |",
        "|---|---|---|---|---|---|",
    ]
    for workload in ("W1", "W2", "W3"):
        for name in targets(runs, workload):
            lat = " · ".join(
                f"{fmt(get(r, workload, name).get('p50_ms'), 2)} / "
                f"{fmt(get(r, workload, name).get('p99_ms'), 2)} / "
                f"{fmt(get(r, workload, name).get('max_ms'), 1)}"
                for r in runs
            )
            label = name
            if workload == "W2":
                other = f"limit {both(runs, workload, name, 'limit')}; throttled in "
                other += " / ".join(_percent(get(r, workload, name).get("throttled")) for r in runs)
                other += " of its quota periods"
            elif workload == "W3":
                other = (
                    f"last socket p50 {both(runs, workload, name, 'last_socket_p50_ms')} ms, "
                    f"max {both(runs, workload, name, 'last_socket_max_ms')} ms"
                )
            else:
                other = ""
            lines.append(
                f"| {workload} | {label} | {both(runs, workload, name, 'cpu_us_per_msg')} | {lat} | "
                f"{other} | {both(runs, workload, name, 'loss', 0)} |"
            )
    lines += ["", "| W4 target | RSS at 0 / 1,000 / 3,000 idle sockets (KiB) | KiB per socket |",
              "|---|---|---|"]  # fmt: skip
    for name in targets(runs, "W4"):
        rss = " · ".join(
            " / ".join(str(v) for v in get(r, "W4", name).get("rss_kib", {}).values()) for r in runs
        )
        lines.append(f"| {name} | {rss} | {both(runs, 'W4', name, 'kib_per_socket')} |")
    lines += ["", "| W5 target | CPU µs/msg, 1 process | CPU µs/msg, 4 processes | 4 ÷ 1 |",
              "|---|---|---|---|"]  # fmt: skip
    for name in targets(runs, "W5"):
        one = " / ".join(fmt(get(r, "W5", name).get("one", {}).get("cpu_us_per_msg")) for r in runs)
        four = " / ".join(
            fmt(get(r, "W5", name).get("four", {}).get("cpu_us_per_msg")) for r in runs
        )
        lines.append(f"| {name} | {one} | {four} | {both(runs, 'W5', name, 'ratio_4_to_1', 2)} |")
    lines += ["", "| W6 target | p50 (ms) | p99 (ms) | received |", "|---|---|---|---|"]
    for name in targets(runs, "W6"):
        lines.append(
            f"| {name} | {both(runs, 'W6', name, 'p50_ms', 2)} | "
            f"{both(runs, 'W6', name, 'p99_ms', 2)} | {both(runs, 'W6', name, 'received', 0)} |"
        )
    lines += library_tables(runs)
    lines += script_cost_tables(runs)
    return lines


def script_cost_tables(runs: list[dict[str, Any]]) -> list[str]:
    """W11: each run's tables of the history script's cost, as bench/script_cost.py prints
    them."""
    lines: list[str] = []
    for i, r in enumerate(runs, 1):
        tables = get(r, "W11", "turbocast-threads").get("tables")
        if tables:
            lines += ["", f"W11 the history script's cost to Redis, run {i} "
                      "(`python -m bench.script_cost` on its own):", "", *tables]  # fmt: skip
    return lines


def _percent(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, float) else "—"


def saturation_table(runs: list[dict[str, Any]]) -> list[str]:
    """W2 at saturation beside W1's light load: server CPU per delivered targeted message."""
    share = next(
        (get(r, "W2", n).get("server_share") for r in runs for n in targets(runs, "W2")), None
    )
    cap = f"{share:.0%} of its core" if share else "no cap (no cgroup could be made)"
    lines = [
        "",
        f"Server CPU µs per delivered targeted message, light and saturated. W1: 500 msgs/s "
        f"to 200 sockets, the server mostly idle. W2: 20,000 messages to 200 sockets, "
        f"published 100 per round trip by every target's own mechanism, the server capped at "
        f"{cap} (a CPU cgroup, during the measurement only), so it is the limit; `limit` "
        "says whether it was (throttled in ≥ 80 % of its quota periods). Ratios against the "
        "floor and Flask-SocketIO (same serving mode) of the same run.",
        "",
        "| target | light (W1) | saturated (W2) | saturated ÷ floor's | saturated ÷ "
        "Flask-SocketIO's | limit (W2) | loss (W2) | publisher CPU µs / msg (W2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in targets(runs, "W2"):
        peer = "socketio-gevent" if name.endswith("gevent") else "socketio-threads"
        lines.append(
            f"| {name} | {both(runs, 'W1', name, 'cpu_us_per_msg')} | "
            f"{both(runs, 'W2', name, 'cpu_us_per_msg')} | "
            f"{ratio(runs, 'W2', name, 'floor', 'cpu_us_per_msg')} | "
            f"{ratio(runs, 'W2', name, peer, 'cpu_us_per_msg')} | "
            f"{both(runs, 'W2', name, 'limit')} | {both(runs, 'W2', name, 'loss', 0)} | "
            f"{both(runs, 'W2', name, 'publisher_us_per_msg')} |"
        )
    return lines


#: The workloads measured without a web server: (workload, the module that measured and
#: renders them, the key of their rows, each run's title).
LIBRARY_WORKLOADS = [
    ("W7", "bench.presence", "phases",
     "W7 presence, run {run}: {members:,} members (one connection each) on one stream, "
     "median of {rounds} rounds, Redis {redis_version}; `python -m bench.presence` on its "
     "own. Per member unless marked; ratios against the peers measured in the same run."),
    ("W8", "bench.cluster", "rows",
     "W8 cluster, run {run}: {channels:,} channels, batches of {batch}, {seconds:g} s a "
     "phase, Redis {redis_version} (every node on core 0, every client on core 1: 3 shards "
     "share one core here, so read the CPU per message, not 3× the msgs/s); `python -m "
     "bench.cluster` on its own. Limit: the side at ≥ 90 % of its core, `shared` when a "
     "core was full with other processes' work."),
    ("W9", "bench.deflate", "rows",
     "W9 permessage-deflate, run {run}: each stream's frame as it is (the peer) and "
     "deflated as the relay makes it (once per message per process, zlib's fastest "
     "level), server CPU to build it and the client's to inflate it, medians of "
     "interleaved rounds; `python -m bench.deflate` on its own."),
    ("W10", "bench.publish_cost", "rows",
     "W10 publish cost, run {run}: {bytes}-byte messages one by one, the publisher's CPU "
     "and wall µs per message, medians of {rounds} interleaved rounds of {per_round}; "
     "`python -m bench.publish_cost` on its own."),
]  # fmt: skip


def library_tables(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's tables of the workloads measured without a server (their modules render
    them)."""
    lines: list[str] = []
    for workload, module, key, title in LIBRARY_WORKLOADS:
        render = importlib.import_module(module).table
        for i, r in enumerate(runs, 1):
            result = get(r, workload, "turbocast-threads")
            if key in result:
                lines += ["", title.format(run=i, **result), "", *render(result)]
    return lines


def targets_check(runs: list[dict[str, Any]]) -> list[str]:
    t, g, f, s = "turbocast-threads", "turbocast-gevent", "floor", "socketio-threads"
    rows = [
        ("CPU per targeted msg (W1) ≤ 1.2× floor", ratio(runs, "W1", t, f, "cpu_us_per_msg")),
        ("CPU per targeted msg at saturation (W2) ≤ 1.5× floor (threads)",
         ratio(runs, "W2", t, f, "cpu_us_per_msg")),
        ("CPU per targeted msg at saturation (W2) ≤ 1.5× floor (gevent)",
         ratio(runs, "W2", g, f, "cpu_us_per_msg")),
        ("CPU per targeted msg (W1) ≤ 0.5× Flask-SocketIO", ratio(runs, "W1", t, s, "cpu_us_per_msg")),
        ("CPU per targeted msg at saturation (W2) ≤ 0.5× Flask-SocketIO (threads)",
         ratio(runs, "W2", t, s, "cpu_us_per_msg")),
        ("CPU per targeted msg at saturation (W2) ≤ 0.5× Flask-SocketIO (gevent)",
         ratio(runs, "W2", g, "socketio-gevent", "cpu_us_per_msg")),
        ("to_session's publisher CPU ≤ 2× a bare PUBLISH (W10)", " / ".join(
            fmt(get(r, "W10", t).get("rows", {}).get("to_session", {}).get("cpu_ratio"), 2) + "×"
            for r in runs)),
        ("W2: the server the limit for every target", " / ".join(
            "yes" if all(get(r, "W2", n).get("limit") == "server" for n in targets(runs, "W2"))
            else "no" for r in runs)),
        ("W1 p99 ≤ 1 ms, zero loss", both(runs, "W1", t, "p99_ms", 2) + " ms; loss "
         + both(runs, "W1", t, "loss", 0)),
        ("W3 last socket ≤ 1.2× floor (threads)", ratio(runs, "W3", t, f, "last_socket_p50_ms")),
        ("W3 last socket ≤ 1.2× floor (gevent)", ratio(runs, "W3", g, f, "last_socket_p50_ms")),
        ("W3 last socket ≤ 0.5× Flask-SocketIO (threads)", ratio(runs, "W3", t, s, "last_socket_p50_ms")),
        ("W3 last socket ≤ 0.5× Flask-SocketIO (gevent)", ratio(runs, "W3", g, s, "last_socket_p50_ms")),
        ("W4 ≤ 20 KiB/socket (gevent)", both(runs, "W4", "turbocast-gevent", "kib_per_socket")),
        ("W4 ≤ 80 KiB/socket (threads)", both(runs, "W4", t, "kib_per_socket")),
        ("W5 4 processes ≤ 1.3× one (threads)", both(runs, "W5", t, "ratio_4_to_1", 2)),
        ("W5 4 processes ≤ 1.3× one (gevent)", both(runs, "W5", g, "ratio_4_to_1", 2)),
        ("W6 p50 ≤ 5 ms, p99 ≤ 20 ms", "p50 " + both(runs, "W6", t, "p50_ms", 2) + " ms; p99 "
         + both(runs, "W6", t, "p99_ms", 2) + " ms"),
    ]  # fmt: skip
    return ["| target | measured (run 1 / run 2) |", "|---|---|"] + [
        f"| {a} | {b} |" for a, b in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--out", default=str(ROOT))
    args = parser.parse_args()
    runs = load(Path(args.results))
    out = Path(args.out)
    plot_w1(runs, out)
    plot_bars(
        runs,
        "W2",
        "per_core_per_s",
        "delivered msgs/s per server core",
        "W2: throughput at saturation",
        out / "w2-throughput.png",
    )
    plot_bars(
        runs, "W4", "kib_per_socket", "KiB per idle socket", "W4: memory", out / "w4-memory.png"
    )
    notes = (out / "NOTES.md").read_text() if (out / "NOTES.md").exists() else ""
    machine = runs[0]["machine"]
    text = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.report` from `bench/results/run-*.json`, written by",
        f"`{runs[0]['command']}` (`make bench`). Every figure shows run 1 / run 2.",
        *(
            [
                f"Measured again after a change and merged (`python -m bench.merge`): "
                f"`{'`, `'.join(sorted(set(runs[0]['reruns'])))}`."
            ]
            if runs[0].get("reruns")
            else []
        ),
        "",
        f"Machine: {machine['cpus']} cores, {machine['platform']}, Python {machine['python']}. "
        "Server pinned to core 0; Redis, the publisher process and the client load generator "
        "on core 1. Messages are ~300-byte Turbo Streams. Server CPU is every thread of every "
        "server process, from `/proc/<pid>/task/*/schedstat`.",
        "",
        "## Against the targets",
        "",
        *targets_check(runs),
        "",
        "## At saturation",
        *saturation_table(runs),
        "",
        "## All figures",
        "",
        *table(runs),
        "",
        "![W1 latency CDF](w1-latency-cdf.png) ![W2 throughput](w2-throughput.png) "
        "![W4 memory](w4-memory.png)",
        "",
        notes,
    ]
    (out / "BENCHMARKS.md").write_text("\n".join(text) + "\n")
    print(f"wrote {out / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
