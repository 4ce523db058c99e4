"""Fixtures for every tier: a real Redis server (its own unless --redis-url or REDIS_URL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.embedded_redis import EmbeddedRedis
from tests.support import Certificates, Distributions, PostgresServer, build, copy_checkout
from turbocast import Publisher


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="use this Redis server instead of starting one (default: $REDIS_URL)",
    )


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis server for the whole run: --redis-url / $REDIS_URL, or our own on a free port."""
    url = request.config.getoption("--redis-url")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the servers a test module starts write their logs."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture
def publisher(redis_url: str) -> Iterator[Publisher]:
    """A publisher on the test Redis, as a worker would have."""
    pub = Publisher(redis_url)
    yield pub
    pub.close()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a certificate for 127.0.0.1, for the servers that speak TLS."""
    return Certificates.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    """Build the sdist, then the wheel from it, as a release would (a few seconds)."""
    source = copy_checkout(tmp_path_factory.mktemp("dist"))
    result = build(source)
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist,) = (source.parent / "dist").glob("turbocast-*.tar.gz")
    (wheel,) = (source.parent / "dist").glob("turbocast-*.whl")
    return Distributions(sdist, wheel)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster of this run's own (initdb on a free port), never the
    machine's server; SQLAlchemy's URL for it."""
    with PostgresServer() as server:
        yield server.url


@pytest.fixture(scope="session", autouse=True)
def demo_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The demo apps the tests make, and the processes they start, keep their boards in a
    temporary SQLite file, not in the checkout's instance/demo.sqlite (unless DATABASE_URL
    names a database)."""
    if "DATABASE_URL" in os.environ:
        yield
        return
    path = tmp_path_factory.mktemp("demo-db") / "demo.sqlite"
    os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    try:
        yield
    finally:
        del os.environ["DATABASE_URL"]
