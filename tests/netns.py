"""Several hosts on one machine: Linux network namespaces on a bridge, for the multi-host tests.

Each host is a network namespace with one veth into a bridge in the root namespace;
the bridge has the subnet's first address, so the test run (in the root namespace)
reaches every host, and the hosts reach each other. ``ip netns exec <name> <cmd>``
runs a program on a host: it sees only that host's addresses and its own loopback.
Names carry the test run's pid, and the subnet is a random free 10.x.y.0/24, so
runs side by side do not meet. Needs root and iproute2's ``ip``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.embedded_redis import free_port
from tests.redis_topologies import RedisClusterServer
from tests.support import ManagedProcess, wait_for

_networks = itertools.count()


class NetworkUnavailable(RuntimeError):
    """This machine cannot make the namespaces (not root, no ``ip``, the kernel refused)."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _run(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _probe(*args: str) -> None:
    """Run a step that tells whether the machine allows namespaces at all."""
    done = _ip(*args)
    if done.returncode != 0:
        raise NetworkUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _taken() -> list[ipaddress.IPv4Network]:
    """The networks of the root namespace's routes and addresses."""
    found = [line.split()[0] for line in _ip("-4", "route").stdout.splitlines()]
    for line in _ip("-4", "-o", "addr").stdout.splitlines():
        words = line.split()
        found.append(words[words.index("inet") + 1])
    networks = []
    for word in found:
        with contextlib.suppress(ValueError):  # "default", "unreachable", ...
            networks.append(ipaddress.IPv4Network(word, strict=False))
    return networks


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no address or route of the root namespace touches."""
    taken = _taken()
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.{random.randrange(256)}.{random.randrange(256)}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("no free 10.x.y.0/24")


@dataclass
class Host:
    """One network namespace on the bridge."""

    namespace: str
    address: str

    @property
    def command_prefix(self) -> tuple[str, ...]:
        """What runs a command inside this host: ``ip netns exec <namespace>``."""
        return ("ip", "netns", "exec", self.namespace)

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        return [int(pid) for pid in _ip("netns", "pids", self.namespace).stdout.split()]

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of this host, as a power cut would, until none is left.

        :returns: the pids killed (a process forked meanwhile is killed too).
        """
        killed: list[int] = []

        def none_left() -> bool:
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.extend(pid for pid in pids if pid not in killed)
            return not pids

        wait_for(none_left, timeout=timeout, what=f"every process of {self.namespace} to die")
        return killed

    def reaches(self, address: str, port: int) -> bool:
        """Whether a TCP connection from inside this host to ``address:port`` is accepted."""
        script = (
            "import socket, sys;"
            "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"
        )
        probe = [*self.command_prefix, sys.executable, "-c", script, address, str(port)]
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


@dataclass
class Network:
    """A bridge in the root namespace and a namespace per host name, each on its own veth.

    ``up()`` builds it; ``down()`` kills what still runs in the namespaces and removes
    namespaces, veths and bridge, whatever ``up()`` got to. Use it as a context manager.
    """

    names: list[str]
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Interface names are 15 characters at most: "tc", the pid in hex (6 at most), a
        # counter, then "br", "v<n>" or "p<n>".
        self.tag = f"tc{os.getpid():x}{next(_networks)}"
        self.bridge = f"{self.tag}br"
        self._namespaces: list[str] = []
        self._links: list[str] = []

    def up(self) -> Network:
        if os.geteuid() != 0:
            raise NetworkUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NetworkUnavailable("iproute2's `ip` command is missing")
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet[1])  # the root namespace's address, on the bridge
        _probe("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _run("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("link", "set", self.bridge, "up")
        for index, name in enumerate(self.names):
            namespace = f"turbocast-{self.tag}-{name}"
            address = str(self.subnet[10 + index])
            outside, inside = f"{self.tag}v{index}", f"{self.tag}p{index}"
            _probe("netns", "add", namespace)
            self._namespaces.append(namespace)
            _probe("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._links.append(outside)
            _run("link", "set", inside, "netns", namespace)
            _run("link", "set", outside, "master", self.bridge, "up")
            _run("-n", namespace, "link", "set", "lo", "up")
            _run("-n", namespace, "link", "set", inside, "name", "eth0")
            _run("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("-n", namespace, "link", "set", "eth0", "up")
            self.hosts[name] = Host(namespace, address)
        return self

    def down(self) -> None:
        for host in self.hosts.values():
            # The kernel frees a namespace (and the veth end in it) once its last process exits.
            with contextlib.suppress(AssertionError):
                host.kill_all()
        for namespace in self._namespaces:
            _ip("netns", "del", namespace)
        for link in reversed(self._links):
            _ip("link", "del", link)  # a veth may be gone already with its namespace
        self._namespaces, self._links = [], []

    def __enter__(self) -> Network:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.down()


@dataclass
class NamespacedRedis(ManagedProcess):
    """A real redis-server on one host, bound to the host's address, nothing saved to disk."""

    host: Host
    executable: str
    # A port free here is free in the host's own namespace too (nothing else runs there).
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"redis://{self.host.address}:{self.port}/0"

    def start(self, log_dir: Path) -> NamespacedRedis:
        args = [
            *self.host.command_prefix, self.executable,
            "--bind", self.host.address, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(log_dir),
            # Protected mode answers only loopback clients while there is no password; the
            # web hosts are others on a private bridge.
            "--protected-mode", "no",
        ]  # fmt: skip
        self._spawn(args, log_dir / f"redis-{self.host.namespace}.log", {})
        wait_for(self._answers, timeout=10, what=f"redis-server on {self.url}")
        return self

    def _answers(self) -> bool:
        self._check_running()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # not listening yet; any other error (a refusal) says why at once
        finally:
            client.close()


class NamespacedCluster(RedisClusterServer):
    """A Redis Cluster on one host: six cluster nodes (3 primaries, 3 replicas) bound to
    the host's address, made with ``redis-cli --cluster create`` run on that host.

    Its ports are fixed, ``first_port`` and the five after it (their bus ports 10000
    higher): the host's namespace is its own, nothing else listens there.
    """

    def __init__(self, host: Host, first_port: int = 7000) -> None:
        super().__init__(
            host=host.address,
            ports=range(first_port, first_port + 6),
            command_prefix=host.command_prefix,
            # As for NamespacedRedis: its clients are other hosts on a private bridge.
            node_args=("--protected-mode", "no"),
        )
