"""The benchmark harness itself runs: a quick W1 against turbocast and the floor.

Speed is measured by ``make bench``, never asserted here; this only keeps the
harness working (servers start, load and publisher processes talk, nothing is lost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cpushare
from bench.cluster import PLAN, row_name
from bench.script_cost import _swap, rows
from tests.redis_topologies import skip_unless_redis_7
from tests.support import ROOT


def _bench(out: Path, *args: str) -> dict:
    """``bench.run --runs 1 --out out`` with ``args``; the run's results."""
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--runs", "1", *args, "--out", str(out)],
        cwd=ROOT, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    return json.loads((out / "run-1.json").read_text())


def _report(out: Path) -> str:
    """``bench.report`` of the results in ``out``; the page it wrote."""
    subprocess.run(
        [sys.executable, "-m", "bench.report", "--results", str(out), "--out", str(out)],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    return (out / "BENCHMARKS.md").read_text()


def test_the_benchmark_harness_runs_a_quick_workload_with_no_loss(tmp_path):
    results = _bench(
        tmp_path, "--quick", "--workloads", "W1", "--targets", "turbocast-threads,floor"
    )
    for target in ("turbocast-threads", "floor"):
        w1 = results["workloads"]["W1"][target]
        assert "error" not in w1, w1
        assert w1["loss"] == 0
        assert w1["received"] == w1["expected"] > 0
        assert w1["cpu_us_per_msg"] > 0
    report = _report(tmp_path)
    assert "| W1 | turbocast-threads |" in report
    assert (tmp_path / "w1-latency-cdf.png").stat().st_size > 1000


def test_the_per_thread_cpu_tool_names_the_relay_and_the_writers():
    out = subprocess.run(
        [sys.executable, "-m", "bench.threadcpu", "--sockets", "20", "--count", "200",
         "--rate", "200"],
        cwd=ROOT, check=True, timeout=300, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "200 of 200 messages" in out
    assert "turbo-relay" in out
    assert "request threads (the sockets' writers)" in out


def test_w2_publishes_in_batches_to_a_capped_server_for_each_kind_with_no_loss(tmp_path):
    probe = cpushare.make(f"turbocast-test-{os.getpid()}", 0.5)  # can this machine cap?
    if probe is not None:
        probe.remove()
    targets = ("turbocast-threads", "floor", "socketio-gevent")
    results = _bench(tmp_path, "--quick", "--workloads", "W1,W2", "--targets", ",".join(targets))
    for target in targets:
        w2 = results["workloads"]["W2"][target]
        assert "error" not in w2, w2
        assert (w2["loss"], w2["batch"]) == (0, 100)
        assert w2["received"] == w2["expected"] > 0
        assert w2["publisher_us_per_msg"] > 0
        if probe is None:
            assert (w2["limit"], w2["server_share"]) == ("uncapped", None)
        else:  # capped at a quarter of its core, the server is the limit
            assert (w2["limit"], w2["server_share"]) == ("server", 0.25), w2["throttled"]
            assert not Path(w2["cgroup"]).exists()  # deleted, with whatever was left in it
    report = _report(tmp_path)
    assert "| turbocast-threads | " in report.split("## At saturation")[1]
    assert "| W2 | socketio-gevent |" in report


def test_the_deflate_and_publish_cost_workloads_run_and_the_report_renders_them(tmp_path):
    results = _bench(tmp_path, "--quick", "--workloads", "W9,W10")
    streams = results["workloads"]["W9"]["turbocast-threads"]["rows"]
    assert set(streams) == {"one post", "20 posts", "200 posts"}
    for name, row in streams.items():
        assert row["deflated_bytes"] < row["plain_bytes"], name
        assert row["deflated_cpu_us"] > 0 and row["inflate_cpu_us"] > 0, name
    costs = results["workloads"]["W10"]["turbocast-threads"]["rows"]
    assert set(costs) == {"bare PUBLISH", "to_session", "to_session, rendered"}
    assert costs["bare PUBLISH"]["cpu_ratio"] == 1.0
    assert all(row["cpu_us"] > 0 for row in costs.values())
    report = _report(tmp_path)
    assert "| 200 posts | " in report
    assert "| to_session | " in report


def test_the_presence_workload_measures_1000_members_and_the_report_renders_it(tmp_path):
    results = _bench(tmp_path, "--quick", "--workloads", "W7")
    w7 = results["workloads"]["W7"]["turbocast-threads"]
    assert "error" not in w7, w7
    assert w7["members"] > 0
    for phase in ("join", "renew", "linger", "reap", "members", "count", "publish", "ping"):
        assert w7["phases"][phase]["complete"], phase
        assert w7["phases"][phase]["wall_us"] > 0, phase
    assert w7["ratios"]["publish"]["join"]["wall_us"] > 0
    assert w7["memory"]["bytes_per_member"] > 0
    report = _report(tmp_path)
    assert "| join, one by one (per member) |" in report
    assert "| presence keys ÷ the set |" in report


def test_the_cluster_workload_measures_each_deployment_and_the_report_renders_it(tmp_path):
    skip_unless_redis_7()
    results = _bench(tmp_path, "--quick", "--workloads", "W8")
    w8 = results["workloads"]["W8"]["turbocast-threads"]
    assert "error" not in w8, w8
    assert set(w8["rows"]) == {row_name(d, phase, kind) for d, phase, kind, _ in PLAN}
    for name, row in w8["rows"].items():
        assert row["messages"] > 0, name
        assert len(row["node_us_per_msg"]) == max(row["shards"], 1), name
        assert all(v > 0 for v in row["node_us_per_msg"]), name
        assert row["limit"] in {"redis", "load", "shared", "neither"}, name
        if "delivered" in row:
            assert row["delivered"] > 0 and row["dropped_connections"] == 0, name
    # Sharded pub/sub: every shard got messages of its own.
    assert all(n > 0 for n in w8["rows"]["publish cluster-3 SPUBLISH"]["node_own_msgs"])
    assert all(v is not None for v in w8["ratios"].values()), w8["ratios"]
    report = _report(tmp_path)
    assert "| publish cluster-3 turbocast |" in report
    assert "| fan-out delivered/s, classic ÷ sharded, 3 shards |" in report


def test_the_script_cost_workload_measures_every_row_against_the_bare_publish(tmp_path):
    skip_unless_redis_7()
    results = _bench(tmp_path, "--quick", "--workloads", "W11")
    out = "\n".join(results["workloads"]["W11"]["turbocast-threads"]["tables"])
    lines = {line.split(" | ")[0]: line for line in out.splitlines() if line.startswith("| ")}
    for row in rows():
        assert f"| {row.name}" in lines, row.name
    assert "| shipped | spread |" in out and "| shipped | hot |" in out  # the split by command
    assert "not 2bec92c's script" not in out
    assert "| shipped | spread |" in _report(tmp_path)


def test_a_script_variant_that_no_longer_matches_the_script_is_refused():
    # Else the variant would be the script itself, measured under another name.
    assert _swap("a b", ("b", "c")) == "a c"
    with pytest.raises(ValueError, match="no longer holds"):
        _swap("return 1", ("'MAXLEN', ARGV[2]", "'MAXLEN', '~', ARGV[2]"))
