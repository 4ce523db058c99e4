"""Where turbocast's Redis is: one server, a Redis Cluster, or a primary Sentinel names.

``TURBO_REDIS_URL`` (else ``REDIS_URL``) takes one of three forms:

- ``redis://``, ``rediss://``, ``unix://``: one server, redis-py's own URL form.
- ``redis+cluster://[[user]:password@]host:port[,host:port...][?option=value...]``: a
  Redis Cluster (Redis 7 or newer); the hosts are seeds, any of them will do, more
  than one survives the loss of one. ``rediss+cluster://`` speaks TLS to every node.
  Publishers use sharded pub/sub (``SPUBLISH``), relays ``SSUBSCRIBE`` on one
  connection per shard they need, and each channel's history sits in its channel's
  hash slot (:func:`turbocast.channels.history_key`), so the publish-and-append stays
  one script on one shard.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?option=value...]``:
  the primary that these Sentinels name for ``service``; after a failover every new
  connection finds the new primary. ``rediss+sentinel://`` speaks TLS to Redis (not to
  the Sentinels). ``sentinel_username`` and ``sentinel_password`` are the Sentinels'
  own credentials, if they have any.

Options in the query are redis-py's connection options, as its URLs take them
(``socket_timeout=2``, ``ssl_cert_reqs=none``...). Celery's broker is not affected: it
stays wherever ``CELERY`` / ``REDIS_URL`` point it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from .errors import TurboError

#: A client for any of the three forms (a :class:`redis.cluster.RedisCluster` for a cluster).
Client = Any

_CLUSTER = ("redis+cluster", "rediss+cluster")
_SENTINEL = ("redis+sentinel", "rediss+sentinel")
_SENTINEL_OWN = ("sentinel_username", "sentinel_password")
_PASSWORD_OPTION = re.compile(r"((?:^|&)[^=&]*password=)[^&]*", re.IGNORECASE)


class RedisURLError(TurboError, ValueError):
    """A Redis URL turbocast cannot use (its form is in :mod:`turbocast.topology`)."""


@dataclass(frozen=True)
class Topology:
    """A parsed Redis URL: what kind of deployment, and how to reach it.

    Build one with :func:`parse`.
    """

    #: ``"single"``, ``"cluster"`` or ``"sentinel"``.
    kind: str
    #: The URL as given (credentials and all: not in the repr).
    url: str = field(repr=False)
    #: ``(host, port)`` of the cluster's seeds or the Sentinels (empty for one server).
    hosts: tuple[tuple[str, int], ...] = ()
    #: The Sentinel service name (the primary's name in Sentinel's configuration).
    service: str = ""
    #: Connection options for Redis itself (credentials, TLS, db, the query's options).
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Options for the Sentinels' own connections.
    sentinel_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def sharded(self) -> bool:
        """Whether pub/sub is sharded (``SPUBLISH``/``SSUBSCRIBE``): a Redis Cluster."""
        return self.kind == "cluster"

    def client(self, **options: Any) -> Client:
        """A client for this deployment.

        A cluster's client connects when made (redis-py reads the slot map then); the
        others connect on first use.

        :param options: redis-py connection options (timeouts, retry...); the URL's own win.
        :raises redis.ConnectionError: a cluster none of whose seeds answered.
        """
        merged = {**options, **self.options}
        if self.kind == "cluster":
            merged.pop("db", None)
            nodes = [ClusterNode(host, port) for host, port in self.hosts]  # type: ignore[no-untyped-call]
            try:
                return RedisCluster(startup_nodes=nodes, **merged)
            except RedisClusterException as exc:
                # redis-py reads the slot map when the client is made; unreachable, it
                # raises its own exception: a RedisError here, as for one server.
                raise redis.ConnectionError(f"no Redis Cluster node answered: {exc}") from exc
        if self.kind == "sentinel":
            sentinel_options = {
                key: merged[key]
                for key in ("socket_timeout", "socket_connect_timeout")
                if key in merged
            }
            # One try per Sentinel: redis-py asks the next one when one does not answer,
            # and its default retries (10, backing off) would spend seconds on a dead one
            # at every connect before asking the next.
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self.hosts),
                sentinel_kwargs={
                    **sentinel_options,
                    "retry": Retry(NoBackoff(), 0),
                    **self.sentinel_options,
                },
                **sentinel_options,
            )
            return sentinel.master_for(  # type: ignore[no-untyped-call]
                self.service, redis_class=redis.Redis, **merged
            )
        return redis.Redis.from_url(self.url, **options)

    def connection_pool(self, **options: Any) -> redis.ConnectionPool:
        """A pool of connections to one server, or to the primary Sentinel names now.

        For a cluster, see :meth:`client` (a pool per node).

        :param options: redis-py connection options; the URL's own win.
        :raises RedisURLError: for a cluster.
        """
        if self.kind == "cluster":
            raise RedisURLError("a Redis Cluster has a pool per node: use client()")
        if self.kind == "sentinel":
            pool: redis.ConnectionPool = self.client(**options).connection_pool
            return pool
        return redis.ConnectionPool.from_url(self.url, **options)


def parse(url: str) -> Topology:
    """Read a Redis URL in any of the forms of :mod:`turbocast.topology`.

    :param url: the URL.
    :raises RedisURLError: when it names no host, a port is not a number, or a Sentinel
        URL names no service.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in _CLUSTER + _SENTINEL:
        return Topology("single", url)
    kind = "cluster" if scheme in _CLUSTER else "sentinel"
    # Not urlsplit: it reads no port from a list of hosts, and ends the credentials at
    # the first "/" (a password's, when not escaped): they end at the last "@".
    rest, _, query = rest.partition("?")
    credentials, _, rest = rest.rpartition("@")
    hostlist, _, path_text = rest.partition("/")
    hosts = tuple(_host(item, url) for item in hostlist.split(",") if item)
    if not hosts:
        raise RedisURLError(f"{_safe(url)}: names no host")
    options: dict[str, Any] = {}
    sentinel_options: dict[str, Any] = {}
    if credentials:
        username, _, password = credentials.partition(":")
        if username:
            options["username"] = unquote(username)
        if password:
            options["password"] = unquote(password)
    if scheme.startswith("rediss"):
        options["ssl"] = True
    for name, value in parse_qsl(query):
        if name in _SENTINEL_OWN:
            sentinel_options[name.removeprefix("sentinel_")] = unquote(value)
            continue
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            options[name] = parser(unquote(value)) if parser else unquote(value)
        except (TypeError, ValueError) as exc:
            raise RedisURLError(f"{_safe(url)}: invalid value for {name}") from exc
    service = ""
    path = [unquote(p) for p in path_text.split("/") if p]
    if kind == "sentinel":
        if not path:
            raise RedisURLError(f"{_safe(url)}: a Sentinel URL names its service: /<service>")
        service = path[0]
        if len(path) > 1:
            if not path[1].isdigit():
                raise RedisURLError(f"{_safe(url)}: the database after the service is a number")
            options["db"] = int(path[1])
    elif path:
        raise RedisURLError(f"{_safe(url)}: a Redis Cluster has no databases: drop the path")
    return Topology(kind, url, hosts, service, options, sentinel_options)


def _host(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host:
        raise RedisURLError(f"{_safe(url)}: every host needs its port ({item!r})")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisURLError(f"{_safe(url)}: {port!r} is not a port")
    return host.strip("[]"), int(port)


def _safe(url: str) -> str:
    # Never log or raise a password: the credentials, nor a *password option's value.
    head, question, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    query = _PASSWORD_OPTION.sub(r"\1***", query)
    return f"{scheme}{sep}{rest}{question}{query}"


def publish(client: Client, sharded: bool, channel: str, data: bytes) -> int:
    """Publish on pub/sub the way the deployment needs (``SPUBLISH`` on a cluster).

    :param client: a client from :meth:`Topology.client`.
    :param sharded: the deployment is a Redis Cluster (:attr:`Topology.sharded`).
    :param channel: the channel.
    :param data: the payload.
    :returns: how many subscribers got it.
    """
    if sharded:
        return int(client.spublish(channel, data))
    return int(client.publish(channel, data))
