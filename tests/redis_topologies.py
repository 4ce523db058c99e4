"""Real Redis deployments for tests: a Redis Cluster (3 primaries, 3 replicas) and Sentinel.

Each starts real ``redis-server`` processes on free local ports, in a directory of its
own, and stops them on exit. The cluster is :class:`app.embedded_cluster.LocalCluster`
(the benchmark starts its own too), made with ``redis-cli --cluster create``, and needs
Redis 7 (sharded pub/sub); Sentinel (a primary, a replica, three Sentinels) needs
Redis 6.2 (``sentinel resolve-hostnames``). :func:`skip_unless_redis_7` and
:func:`skip_unless_sentinel` say plainly why not.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from app.embedded_cluster import LocalCluster, Node, Processes, redis_version
from app.embedded_redis import find_redis_server
from tests.support import wait_for

__all__ = ["Node", "RedisClusterServer", "SentinelServers", "skip_unless_redis_7",
           "skip_unless_sentinel"]  # fmt: skip


def skip_unless_redis_7() -> str:
    """The redis-server binary, or skip the test saying why it cannot run here."""
    executable = find_redis_server()
    if redis_version(executable) < (7, 0, 0):
        pytest.skip(f"{executable} is older than Redis 7, which sharded pub/sub needs")
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (Debian: redis-tools)")
    return executable


def skip_unless_sentinel() -> str:
    """The redis-server binary, or skip the test saying why it cannot run Sentinel here."""
    executable = find_redis_server()
    if redis_version(executable) < (6, 2, 0):
        pytest.skip(f"{executable} is older than Redis 6.2 (sentinel resolve-hostnames)")
    return executable


class RedisClusterServer(LocalCluster):
    """A Redis Cluster of 3 primaries and 3 replicas on free local ports.

    ``with RedisClusterServer() as cluster: cluster.url`` (``redis+cluster://...``).
    ``host``, ``ports`` (six) and ``command_prefix`` put every node, and the
    ``redis-cli --cluster create`` that joins them, on another host; ``node_args`` are
    more options for every redis-server. Skips the test without Redis 7 or redis-cli.
    """

    def __init__(
        self,
        node_timeout_ms: int = 1000,
        host: str = "127.0.0.1",
        ports: Sequence[int | None] = (None,) * 6,
        command_prefix: Sequence[str] = (),
        node_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            3, 1, node_timeout_ms, skip_unless_redis_7(),
            host=host, ports=ports, command_prefix=command_prefix, node_args=node_args,
        )  # fmt: skip


class SentinelServers(Processes):
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
