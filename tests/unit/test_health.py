"""turbocast.health: the report's logic, the relay's and listener's state, the route.

No Redis: the relay runs on fake_pubsub's in-memory ``Broker``, and the route's
check is fed what it would have observed.
"""

from __future__ import annotations

import redis
from flask import Flask

import turbocast.health as health_module
from tests.support import wait_for
from tests.unit.fake_pubsub import CHAT, DEADLINE, Broker
from turbocast import Turbo
from turbocast.health import assess, ping
from turbocast.listener import ListenerState
from turbocast.outbox import Outbox
from turbocast.relay import Relay, RelayState

URL = "redis://unused.invalid/0"


def state(
    *,
    running: bool = True,
    connected: bool = True,
    pending: int = 0,
    error: str | None = None,
    heartbeat: bool | None = True,
) -> RelayState:
    return RelayState(running, ListenerState(running, connected, pending, error), heartbeat)


def failing(report: object) -> dict[str, str]:
    assert hasattr(report, "checks")
    return {n: c.reason for n, c in report.checks.items() if not c.ok}


def test_healthy_when_redis_answers_and_the_relay_is_subscribed_and_beating():
    report = assess(None, state())
    assert report.ok and failing(report) == {}
    assert report.to_dict() == {
        "ok": True,
        "checks": {
            "redis": {"ok": True, "reason": "Redis answered PING"},
            "relay": {
                "ok": True,
                "reason": "subscribed, every channel confirmed",
                "running": True,
                "connected": True,
                "pending": 0,
            },
            "heartbeat": {"ok": True, "reason": "the heartbeat thread is alive", "alive": True},
        },
    }


def test_redis_unreachable_fails():
    report = assess("ConnectionError: refused", state())
    assert not report.ok
    assert list(failing(report)) == ["redis"]
    assert "refused" in failing(report)["redis"]


def test_redis_reachable_but_the_relay_still_reconnecting_fails_with_its_last_error():
    report = assess(None, state(connected=False, pending=2, error="ConnectionError: reset"))
    assert not report.ok
    assert list(failing(report)) == ["relay"]
    assert "ConnectionError: reset" in failing(report)["relay"]
    assert report.to_dict()["checks"]["relay"]["pending"] == 2


def test_a_dead_relay_thread_fails():
    assert list(failing(assess(None, state(running=False)))) == ["relay"]


def test_channels_pending_on_an_up_connection_are_reported_but_pass():
    # A new socket's SUBSCRIBE is one round trip away from confirmed: not a failure.
    report = assess(None, state(pending=3))
    assert report.ok
    assert "3 new channel(s)" in report.checks["relay"].reason


def test_a_dead_heartbeat_fails_and_heartbeats_off_pass():
    assert list(failing(assess(None, state(heartbeat=False)))) == ["heartbeat"]
    off = assess(None, state(heartbeat=None))
    assert off.ok and off.to_dict()["checks"]["heartbeat"]["alive"] is None


def test_a_relay_that_could_not_start_fails():
    report = assess(None, None, "TurboError: no Redis URL")
    assert not report.ok
    assert set(failing(report)) == {"relay", "heartbeat"}
    assert "no Redis URL" in failing(report)["relay"]


def test_ping_reports_why_redis_did_not_answer():
    assert ping("redis://127.0.0.1:1/0", 0.5) is not None  # nothing listens on port 1


def test_the_relay_state_follows_its_threads_and_confirmations():
    broker = Broker()
    relay = Relay(URL, pubsub_factory=broker.connect, waker=broker.waker, heartbeat_interval=5)
    before = relay.state()
    assert (before.running, before.listener.connected, before.heartbeat) == (False, False, False)
    relay.attach([CHAT], Outbox(1024))
    assert relay.state().listener.pending == 1
    relay.start()
    try:
        wait_for(lambda: relay.state().listener.connected, timeout=DEADLINE)
        up = relay.state()
        assert (up.running, up.heartbeat, up.listener.alive) == (True, True, True)
        assert (up.listener.pending, up.listener.error) == (0, None)
    finally:
        relay.stop(DEADLINE)
    down = relay.state()
    assert (down.running, down.heartbeat, down.listener.connected) == (False, False, False)


def test_the_listener_reports_why_it_lost_redis():
    calls = []

    def broken() -> object:
        calls.append(1)
        raise redis.ConnectionError("refused")

    relay = Relay(URL, pubsub_factory=broken, waker=lambda _: None)  # type: ignore[arg-type]
    relay.start()
    try:
        wait_for(lambda: calls, timeout=DEADLINE)
        wait_for(lambda: relay.state().listener.error, timeout=DEADLINE)
        assert relay.state().listener.error == "ConnectionError: refused"
        assert not relay.state().listener.connected
    finally:
        relay.stop(DEADLINE)


def _app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(REDIS_URL=URL, SECRET_KEY="x", **config)
    Turbo(app)
    return app


def test_the_route_is_off_by_default_and_answers_200_or_503_where_mounted(monkeypatch):
    assert _app().test_client().get("/healthz").status_code == 404

    seen = {"redis": None, "relay": state()}
    monkeypatch.setattr(health_module, "check", lambda _s: assess(seen["redis"], seen["relay"]))
    client = _app(TURBO_HEALTH_ROUTE="/healthz").test_client()
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.json is not None and ok.json["ok"] is True
    assert ok.headers["Cache-Control"] == "no-store"
    seen["relay"] = state(connected=False, error="TimeoutError: Timeout reading from socket")
    down = client.get("/healthz")
    assert down.status_code == 503 and down.json is not None
    assert down.json["checks"]["relay"]["ok"] is False
    assert "Timeout" in down.json["checks"]["relay"]["reason"]
