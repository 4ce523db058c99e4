"""turbocast.topology: reading Redis URLs for one server, a Redis Cluster or Sentinels."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from turbocast.errors import TurboError
from turbocast.topology import RedisURLError, parse

SECRET = "s3cr3t-pa55"


# -- one server ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["redis://localhost:7379/0", "rediss://:pw@host:6380/1", "unix:///tmp/redis.sock"]
)
def test_a_single_servers_url_is_left_to_redis_py(url):
    topology = parse(url)
    assert (topology.kind, topology.url, topology.hosts, topology.options) == (
        "single",
        url,
        (),
        {},
    )
    assert not topology.sharded


# -- Sentinel ------------------------------------------------------------------------


def test_a_sentinel_url_lists_its_sentinels_and_names_the_service():
    topology = parse("redis+sentinel://10.0.0.1:26370,10.0.0.2:26380,sentinel-3:26381/mymaster")
    assert topology.kind == "sentinel"
    assert topology.hosts == (("10.0.0.1", 26370), ("10.0.0.2", 26380), ("sentinel-3", 26381))
    assert topology.service == "mymaster"
    assert topology.options == {}
    assert not topology.sharded


def test_a_sentinel_url_may_name_a_database_after_the_service():
    assert parse("redis+sentinel://h:26390/mymaster/3").options == {"db": 3}


def test_credentials_are_for_redis_and_percent_decoded():
    topology = parse("redis+sentinel://app%40eu:p%40ss%2Fw@h:26390/mymaster")
    assert topology.options == {"username": "app@eu", "password": "p@ss/w"}
    assert topology.sentinel_options == {}


def test_a_password_alone_or_a_username_alone():
    assert parse("redis+sentinel://:pw@h:1/s").options == {"password": "pw"}
    assert parse("redis+sentinel://user@h:1/s").options == {"username": "user"}


def test_a_password_with_an_unescaped_at_sign_or_slash_still_ends_at_the_last_at():
    topology = parse("redis+sentinel://:p@ss/w@h:26390/mymaster/1")
    assert topology.options == {"password": "p@ss/w", "db": 1}
    assert (topology.hosts, topology.service) == ((("h", 26390),), "mymaster")


def test_the_sentinels_own_credentials_come_from_the_query():
    topology = parse(
        "redis+sentinel://:redis-pw@h:26390/mymaster"
        "?sentinel_username=watcher&sentinel_password=sentinel-pw"
    )
    assert topology.options == {"password": "redis-pw"}
    assert topology.sentinel_options == {"username": "watcher", "password": "sentinel-pw"}


def test_the_rediss_scheme_speaks_tls_to_redis():
    topology = parse("rediss+sentinel://h:26390/mymaster?ssl_cert_reqs=none")
    assert topology.options == {"ssl": True, "ssl_cert_reqs": "none"}


def test_the_scheme_is_read_without_regard_to_case():
    assert parse("Redis+Sentinel://h:26390/mymaster").kind == "sentinel"


def test_query_options_are_parsed_as_redis_py_parses_them():
    topology = parse(
        "redis+sentinel://h:26390/mymaster?socket_timeout=2.5&health_check_interval=10"
        "&client_name=web"
    )
    assert topology.options == {
        "socket_timeout": 2.5,
        "health_check_interval": 10,
        "client_name": "web",
    }


def test_an_ipv6_sentinel_is_written_in_brackets():
    assert parse("redis+sentinel://[::1]:26390,[fe80::2]:26380/m").hosts == (
        ("::1", 26390),
        ("fe80::2", 26380),
    )


def test_the_client_asks_the_sentinels_for_the_service_with_the_urls_options():
    topology = parse(
        "redis+sentinel://:pw@127.0.0.1:26390,127.0.0.1:26380/mymaster/2"
        "?sentinel_password=sp&socket_timeout=3"
    )
    client = topology.client(socket_timeout=9, socket_connect_timeout=1)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["socket_timeout"] == 3  # the URL's own wins
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26390, 26380]
    own = sentinels[0].connection_pool.connection_kwargs
    assert own["password"] == "sp"
    assert own["socket_connect_timeout"] == 1
    client.close()


def test_the_client_tries_each_sentinel_once_before_the_next():
    # redis-py's default (10 retries, backing off) spends seconds on a dead Sentinel.
    client = parse("redis+sentinel://127.0.0.1:26390,127.0.0.1:26380/m").client()
    for sentinel in client.connection_pool.sentinel_manager.sentinels:
        assert sentinel.connection_pool.connection_kwargs["retry"].get_retries() == 0
    client.close()


def test_the_sentinel_pool_speaks_tls_for_rediss():
    client = parse("rediss+sentinel://127.0.0.1:26390/m").client()
    assert issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    client.close()


def test_connection_pool_of_a_sentinel_url_finds_the_primary_at_each_connect():
    pool = parse("redis+sentinel://127.0.0.1:26390/m").connection_pool(socket_timeout=1)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.is_master


# -- Redis Cluster -------------------------------------------------------------------


def test_a_cluster_url_lists_its_seeds_and_is_sharded():
    topology = parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert topology.kind == "cluster"
    assert topology.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert topology.service == ""
    assert topology.sharded


def test_a_cluster_url_takes_credentials_tls_and_options():
    topology = parse("rediss+cluster://app:pw@h:7000?socket_timeout=2&ssl_cert_reqs=none")
    assert topology.options == {
        "username": "app",
        "password": "pw",
        "ssl": True,
        "socket_timeout": 2.0,
        "ssl_cert_reqs": "none",
    }


def test_a_trailing_slash_is_not_a_database():
    assert parse("redis+cluster://h:7000/").options == {}


def test_a_cluster_has_no_connection_pool_of_its_own():
    with pytest.raises(RedisURLError, match="pool per node"):
        parse("redis+cluster://h:7000").connection_pool()


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:26390", "names its service"),
        ("redis+sentinel://h:26390/", "names its service"),
        ("redis+sentinel://h:26390/mymaster/zero", "database after the service is a number"),
        ("redis+sentinel:///mymaster", "names no host"),
        ("redis+sentinel://,/mymaster", "names no host"),
        ("redis+sentinel://h/mymaster", "every host needs its port"),
        ("redis+sentinel://:26390/mymaster", "every host needs its port"),
        ("redis+sentinel://h:port/mymaster", "'port' is not a port"),
        ("redis+sentinel://h:0/mymaster", "'0' is not a port"),
        ("redis+sentinel://h:65536/mymaster", "'65536' is not a port"),
        ("redis+sentinel://h:1,h:-2/mymaster", "'-2' is not a port"),
        ("redis+cluster://h:7000/0", "no databases"),
        ("redis+cluster://", "names no host"),
        ("redis+cluster://h:7000?socket_timeout=soon", "invalid value for socket_timeout"),
    ],
)
def test_a_url_turbocast_cannot_use_is_refused_saying_why(url, why):
    with pytest.raises(RedisURLError, match=why) as raised:
        parse(url)
    assert isinstance(raised.value, TurboError)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://:{SECRET}@h:26390",
        f"redis+sentinel://user:{SECRET}@h:nope/mymaster",
        f"redis+sentinel://user:{SECRET}@/mymaster",
        f"redis+sentinel://:{SECRET}@h:26390/mymaster/x",
        f"rediss+cluster://u:{SECRET}@h:7000/0",
        f"redis+sentinel://:{SECRET}@h:26390/m?socket_timeout=x",
        f"redis+sentinel://h:26390/m?sentinel_password={SECRET}&socket_timeout=x",
        f"redis+sentinel://h:26390/m?password={SECRET}&socket_timeout=x",
        f"redis+sentinel://h:26390/m?socket_timeout=x&Sentinel_Password={SECRET}",
        f"redis+sentinel://:{SECRET[:4]}/{SECRET[4:]}@h/mymaster",  # an unescaped "/"
    ],
)
def test_no_error_says_the_password(url):
    with pytest.raises(RedisURLError) as raised:
        parse(url)
    message = str(raised.value)
    assert SECRET not in message
    assert SECRET[4:] not in message
    assert "***" in message


def test_the_topologys_repr_says_no_password():
    topology = parse(f"redis+sentinel://:{SECRET}@h:26390/m?sentinel_password={SECRET}")
    assert SECRET not in repr(topology)
    assert "h" in repr(topology) and "'m'" in repr(topology)
