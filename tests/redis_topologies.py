"""Real Redis deployments for tests: a Redis Cluster (3 primaries, 3 replicas) and Sentinel.

Each starts real ``redis-server`` processes on free local ports, in a directory of its
own, and stops them on exit. A cluster is made with ``redis-cli --cluster create`` and
needs Redis 7 (sharded pub/sub); Sentinel (a primary, a replica, three Sentinels) needs
Redis 6.2 (``sentinel resolve-hostnames``). :func:`skip_unless_redis_7` and
:func:`skip_unless_sentinel` say plainly why not.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import redis

from app.embedded_redis import find_redis_server, free_port
from tests.support import wait_for


def redis_version(executable: str) -> tuple[int, ...]:
    """The version of a redis-server binary, as numbers."""
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(n) for n in match.groups()) if match else (0,)


def skip_unless_redis_7() -> str:
    """The redis-server binary, or skip the test saying why it cannot run here."""
    executable = find_redis_server()
    if redis_version(executable) < (7, 0, 0):
        pytest.skip(f"{executable} is older than Redis 7, which sharded pub/sub needs")
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (Debian: redis-tools)")
    return executable


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


def skip_unless_sentinel() -> str:
    """The redis-server binary, or skip the test saying why it cannot run Sentinel here."""
    executable = find_redis_server()
    if redis_version(executable) < (6, 2, 0):
        pytest.skip(f"{executable} is older than Redis 6.2 (sentinel resolve-hostnames)")
    return executable


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


class RedisClusterServer:
    """A Redis Cluster of 3 primaries and 3 replicas on free local ports.

    ``with RedisClusterServer() as cluster: cluster.url`` (``redis+cluster://...``).
    ``host``, ``ports`` (six) and ``command_prefix`` put every node, and the
    ``redis-cli --cluster create`` that joins them, on another host; ``node_args`` are
    more options for every redis-server.
    """

    def __init__(
        self,
        node_timeout_ms: int = 1000,
        host: str = "127.0.0.1",
        ports: Sequence[int | None] = (None,) * 6,
        command_prefix: Sequence[str] = (),
        node_args: Sequence[str] = (),
    ) -> None:
        self.executable = skip_unless_redis_7()
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
        subprocess.run(
            [*self.command_prefix, "redis-cli", "--cluster", "create"]
            + [n.address for n in self.nodes]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.healthy, timeout=30, what="the cluster to be ok")
        return self

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and agrees on 3 primaries with slots."""
        try:
            for node in self.live():
                with node.client() as client:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                    primaries = [n for n in _cluster_nodes(client) if "master" in n[2] and n[8:]]
                    if len(primaries) != 3 or any("fail" in n[2] for n in primaries):
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


def _cluster_nodes(client: redis.Redis) -> list[list[str]]:
    raw = client.execute_command("CLUSTER", "NODES")
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


class SentinelServers:
    """A primary, its replica and three Sentinels watching them, on free local ports.

    ``with SentinelServers() as sentinel: sentinel.url`` (``redis+sentinel://...``). A quorum
    of 2 and ``down-after-milliseconds`` 1000: once the primary dies, the Sentinels
    promote the replica within a few seconds.

    :param service: the name the Sentinels know the primary by.
    """

    def __init__(self, service: str = "turbocast") -> None:
        self.service = service
        self.executable = skip_unless_sentinel()
        self._dir = tempfile.TemporaryDirectory(prefix="turbocast-sentinel-")
        directory = Path(self._dir.name)
        self.primary = Node(self.executable, directory)
        self.replica = Node(self.executable, directory, "--replicaof", "127.0.0.1", "0")
        self.replica.args[-1] = str(self.primary.port)
        config = (
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {service} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.sentinels = [
            Node(self.executable, directory, "--sentinel", config=config) for _ in range(3)
        ]

    @property
    def url(self) -> str:
        """Every Sentinel, and the service."""
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> SentinelServers:
        self.primary.start()
        self.replica.start()
        wait_for(self._replicating, timeout=30, what="the replica to sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(
            self._watching, timeout=30, what="the Sentinels to find the replica and each other"
        )
        return self

    def _replicating(self) -> bool:
        try:
            with self.replica.client() as client:
                return bool(client.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def _watching(self) -> bool:
        # Each Sentinel must know the replica (to promote it) and both other Sentinels (to
        # reach a quorum and elect a leader) before a failover can happen.
        try:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.service)
                    if state["num-slaves"] != 1 or state["num-other-sentinels"] != 2:
                        return False
            return True
        except redis.RedisError:
            return False

    def current_primary(self) -> Node | None:
        """The node a Sentinel names as the primary now (``None`` if none answers)."""
        for sentinel in self.sentinels:
            if sentinel.process is None or sentinel.process.poll() is not None:
                continue
            try:
                with sentinel.client() as client:
                    address = client.sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            if address:
                port = int(address[1])
                return next((n for n in (self.primary, self.replica) if n.port == port), None)
        return None

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            node.stop()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> SentinelServers:
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
