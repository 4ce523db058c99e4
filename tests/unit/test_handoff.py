"""turbocast.handoff: which sockets are handed to a lean writer, and what they keep."""

from __future__ import annotations

import socket

import gevent.event
import gevent.socket

from turbocast import handoff


def test_a_plain_socket_is_not_handed_off():
    a, b = socket.socketpair()
    try:
        assert handoff.lean_environ({"gunicorn.socket": a, "HTTP_COOKIE": "c"}) is None
        assert handoff.lean_environ({"werkzeug.socket": a}) is None
    finally:
        a.close()
        b.close()


def test_a_gevent_socket_is_duplicated_with_only_the_headers():
    a, b = gevent.socket.socketpair()
    environ = {
        "gunicorn.socket": a,
        "HTTP_COOKIE": "session=x",
        "HTTP_SEC_WEBSOCKET_KEY": "k",
        "REQUEST_METHOD": "GET",
        "wsgi.input": object(),
    }
    lean = handoff.lean_environ(environ)
    try:
        assert lean is not None
        assert set(lean) == {"gunicorn.socket", "HTTP_COOKIE", "HTTP_SEC_WEBSOCKET_KEY"}
        dup = lean["gunicorn.socket"]
        assert dup.fileno() != a.fileno()

        # gunicorn closes its own descriptor when the request returns; the
        # connection goes on through the duplicate.
        a.close()
        dup.sendall(b"still here")
        assert b.recv(64) == b"still here"
    finally:
        if lean is not None:
            lean["gunicorn.socket"].close()
        b.close()
    assert lean["gunicorn.socket"].fileno() == -1


def test_join_with_no_writers_returns_at_once():
    assert handoff.join(timeout=5) == 0


def test_a_failing_writer_is_logged_and_forgotten(caplog):
    def run() -> None:
        raise RuntimeError("boom")

    handoff.spawn(run)
    assert handoff.join(timeout=5) == 0

    assert "socket writer failed" in caplog.text
    assert "boom" in caplog.text


def test_join_waits_for_running_writers_and_reports_the_rest(caplog):
    release = gevent.event.Event()
    handoff.spawn(release.wait)

    assert handoff.join(timeout=0.05) == 1
    assert "1 socket writers still running at exit" in caplog.text

    release.set()
    assert handoff.join(timeout=5) == 0


def test_a_tls_socket_is_served_where_it_is_not_handed_off():
    # An SSL socket cannot be duplicated ("Can't dup() SSLSocket instances").
    import gevent.ssl

    a, b = gevent.socket.socketpair()
    tls = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT).wrap_socket(
        a, server_hostname="localhost", do_handshake_on_connect=False
    )
    try:
        assert handoff.is_gevent_socket(tls)
        assert handoff.is_tls_socket(tls)
        assert handoff.lean_environ({"gunicorn.socket": tls, "HTTP_COOKIE": "c"}) is None
    finally:
        tls.close()
        b.close()


def test_is_tls_socket_knows_the_standard_librarys_ssl_socket_too():
    import ssl

    a, b = socket.socketpair()
    tls = ssl.create_default_context().wrap_socket(
        a, server_hostname="localhost", do_handshake_on_connect=False
    )
    try:
        assert handoff.is_tls_socket(tls)
        assert not handoff.is_tls_socket(b)
        assert not handoff.is_gevent_socket(tls)
    finally:
        tls.close()
        b.close()
