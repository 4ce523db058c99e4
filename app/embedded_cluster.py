"""A real Redis Cluster on loopback, for the tests and the benchmark.

:class:`LocalCluster` starts ``redis-server`` processes (Redis 7 or newer: sharded
pub/sub) on free local ports, in a directory of its own, makes them a cluster and
stops them on exit. Three primaries and more are joined by ``redis-cli --cluster
create``; a single primary takes every slot itself.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from app.embedded_redis import find_redis_server, free_port

#: Hash slots of a Redis Cluster.
SLOTS = 16384


def redis_version(executable: str) -> tuple[int, ...]:
    """The version of a redis-server binary, as numbers."""
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(n) for n in match.groups()) if match else (0,)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; :class:`AssertionError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def cluster_port() -> int:
    """A free port that a cluster node can use: at most 55535, its bus port (+10000) free too."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free pair of ports for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Node:
    """One redis-server process (a cluster node when ``cluster`` is true).

    By default on a free local port; ``host``, ``port`` and ``command_prefix`` (e.g.
    ``("ip", "netns", "exec", name)``) put it on another host's address instead.

    :param config: the text of a configuration file, written into the node's directory and
        read first (a Sentinel needs one: it rewrites it with what it learns).
    """

    def __init__(
        self,
        executable: str,
        directory: Path,
        *args: str,
        config: str = "",
        cluster: bool = False,
        host: str = "127.0.0.1",
        port: int | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or (cluster_port() if cluster else free_port())
        self.directory = directory / str(self.port)
        self.directory.mkdir()
        conf: list[str] = []
        if config:
            path = self.directory / "redis.conf"
            path.write_text(config)
            conf = [str(path)]
        self.args = [
            *command_prefix, executable, *conf, "--port", str(self.port), "--bind", host, *args
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with (self.directory / "redis.log").open("ab") as log:  # (the child keeps its copy)
            self.process = subprocess.Popen(
                [*self.args, "--dir", str(self.directory), "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self.answers, timeout=10, what=f"redis-server on {self.port} to start")
        except AssertionError as exc:
            log_text = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"{exc}\n{log_text}") from None
        return self

    def answers(self) -> bool:
        try:
            with redis.Redis(self.host, self.port, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(self.host, self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: the process is gone at once, with whatever it had not replicated."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Processes:
    """Servers started by :meth:`start` and stopped by :meth:`stop`; ``with`` does both
    (and stops what did start when starting fails)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LocalCluster(Processes):
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each.

    ``with LocalCluster(3, 1) as cluster: cluster.url`` (``redis+cluster://...``), on free
    local ports by default.

    :param primaries: how many primaries share the 16,384 slots (one, or three and more:
        ``redis-cli --cluster create`` wants three).
    :param replicas: replicas of each primary (only with three primaries and more).
    :param node_timeout_ms: ``cluster-node-timeout``: how long a silent node may be
        before the others count it as failed.
    :param executable: the redis-server binary (7 or newer); :func:`find_redis_server`'s.
    :param host: the address every node binds.
    :param ports: a port for each node (``None``: a free one).
    :param command_prefix: run every node, and the ``redis-cli --cluster create`` that
        joins them, under this (e.g. ``("ip", "netns", "exec", name)``: on another host).
    :param node_args: more options for every redis-server.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        executable: str | None = None,
        *,
        host: str = "127.0.0.1",
        ports: Sequence[int | None] | None = None,
        command_prefix: Sequence[str] = (),
        node_args: Sequence[str] = (),
    ) -> None:
        if primaries < 1 or replicas < 0 or (primaries < 3 and replicas):
            raise ValueError("one primary and no replicas, or three primaries and more")
        count = primaries * (1 + replicas)
        ports = [None] * count if ports is None else list(ports)
        if len(ports) != count:
            raise ValueError(f"{count} nodes need {count} ports")
        self.primary_count, self.replicas = primaries, replicas
        self.executable = executable or find_redis_server()
        self.command_prefix = tuple(command_prefix)
        self._dir = tempfile.TemporaryDirectory(prefix="turbocast-cluster-")
        directory = Path(self._dir.name)
        self.nodes = [
            Node(
                self.executable,
                directory,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                *node_args,
                cluster=True,
                host=host,
                port=port,
                command_prefix=command_prefix,
            )
            for port in ports
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """Every node as a seed."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        if self.primary_count == 1:
            # redis-cli creates clusters of three primaries and more; one takes every slot.
            with self.nodes[0].client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
        else:
            subprocess.run(
                [*self.command_prefix, "redis-cli", "--cluster", "create"]
                + [n.address for n in self.nodes]
                + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
        wait_for(self.healthy, timeout=30, what="the cluster to be ok")
        return self

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and agrees on its primaries with slots, and
        every live replica is in sync with its primary."""
        try:
            for node in self.live():
                with node.client() as client:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                    primaries = [n for n in _cluster_nodes(client) if "master" in n[2] and n[8:]]
                    if len(primaries) != self.primary_count or any(
                        "fail" in n[2] for n in primaries
                    ):
                        return False
                    # A replica whose link to its primary never came up cannot take over.
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
            return True
        except redis.RedisError:
            return False

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def node_of(self, key: str) -> Node:
        """The primary that owns ``key``'s hash slot now."""
        slot = self.slot(key)
        with self.live()[0].client() as client:
            for line in _cluster_nodes(client):
                if "master" in line[2] and "fail" not in line[2] and _owns(line[8:], slot):
                    port = int(line[1].split("@")[0].rpartition(":")[2])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no primary owns slot {slot}")

    def node_id(self, node: Node) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def slot(self, key: str) -> int:
        with self.live()[0].client() as client:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def replica_of(self, primary: Node) -> Node:
        primary_id = self.node_id(primary)
        with primary.client() as client:
            for line in _cluster_nodes(client):
                if "slave" in line[2] and line[3] == primary_id:
                    port = int(line[1].split("@")[0].rpartition(":")[2])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError("the primary has no replica")

    def migrate_slot(self, key: str) -> tuple[Node, Node]:
        """Move ``key``'s slot, keys and all, to another primary; ``(from, to)``.

        The steps of ``redis-cli --cluster reshard`` for one slot: IMPORTING on the
        target, MIGRATING on the source, MIGRATE every key, then SETSLOT NODE everywhere.
        """
        slot = self.slot(key)
        source = self.node_of(key)
        target = next(n for n in self.primaries() if n is not source)
        source_id, target_id = self.node_id(source), self.node_id(target)
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.primaries():
            if node not in (source, target):
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_for(lambda: self.node_of(key) is target, timeout=10, what="the slot to move")
        return source, target

    def failover(self, key: str) -> tuple[Node, Node]:
        """A manual failover of ``key``'s primary: its replica takes over once it has
        everything the primary had (``CLUSTER FAILOVER``); ``(old, new)``."""
        primary = self.node_of(key)
        replica = self.replica_of(primary)
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER")
        wait_for(lambda: self.node_of(key) is replica, timeout=20, what="the failover")
        return primary, replica

    def primaries(self) -> list[Node]:
        with self.live()[0].client() as client:
            ports = [
                int(line[1].split("@")[0].rpartition(":")[2])
                for line in _cluster_nodes(client)
                if "master" in line[2] and "fail" not in line[2] and line[8:]
            ]
        return [n for n in self.nodes if n.port in ports]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        with contextlib.suppress(OSError):
            self._dir.cleanup()


def _cluster_nodes(client: redis.Redis) -> list[list[str]]:
    raw = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return [line.split() for line in text.splitlines() if line.strip()]


def _owns(ranges: list[str], slot: int) -> bool:
    for item in ranges:
        if item.startswith("["):
            continue  # a slot being migrated or imported
        low, _, high = item.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False
