"""The process's one reader: every plain socket read by a single thread, none written."""

from __future__ import annotations

import logging
import os
import socket
import threading

import pytest

from tests.support import wait_for
from turbocast.readers import Readers, readers


class Conn:
    """A connection stand-in: records reads; gone at EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads: list[bytes] = []
        self.gone = threading.Event()
        self.got = threading.Event()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_ready(self) -> bool:
        data = self.sock.recv(4096)
        if not data:
            self.gone.set()
            return False
        self.reads.append(data)
        self.got.set()
        return True


@pytest.fixture
def pairs():
    made: list[tuple[socket.socket, socket.socket]] = []

    kept: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        made.append(socket.socketpair())
        return made[-1]

    make.keep = kept.append  # type: ignore[attr-defined]
    yield make
    for a, b in made:
        a.close()
        b.close()
    for sock in kept:
        sock.close()


def registered(reader: Readers) -> dict[int, object]:
    return {key.fd: key.data for key in reader._selector.get_map().values()}


def test_one_reader_thread_serves_many_sockets_and_drops_them_at_eof(pairs):
    reader = Readers()
    ends = [pairs() for _ in range(3)]
    conns = [Conn(server) for server, _ in ends]
    for conn in conns:
        reader.add(conn)
    assert [t.name for t in threading.enumerate()].count("turbo-reader") >= 1

    for i, (_, client) in enumerate(ends):
        client.sendall(f"hello {i}".encode())
    for i, conn in enumerate(conns):
        assert conn.got.wait(5)
        assert conn.reads == [f"hello {i}".encode()]

    ends[0][1].close()  # EOF on the first
    assert conns[0].gone.wait(5)
    wait_for(lambda: conns[0] not in reader, timeout=5, what="the closed connection to go")
    assert conns[0] not in registered(reader).values()
    assert conns[1] in reader


def test_remove_forgets_a_connection_and_twice_is_harmless(pairs):
    reader = Readers()
    conn = Conn(pairs()[0])
    reader.add(conn)

    reader.remove(conn)
    reader.remove(conn)
    reader.remove(Conn(pairs()[0]))  # never added

    assert conn not in reader
    assert registered(reader) == {}


def test_a_stale_registration_of_a_reused_descriptor_is_replaced(pairs, caplog):
    reader = Readers()
    old_server, old_client = pairs()
    old = Conn(old_server)
    reader.add(old)
    fd = old_server.fileno()
    # A failure before the writer ran: the socket closed, its registration left behind.
    old_server.close()
    old_client.close()
    new_server, new_client = pairs()
    if new_server.fileno() != fd:
        # The kernel gives the lowest free descriptor, which is fd unless another one below
        # it was closed meanwhile (a thread, the garbage collector): put the socket at fd.
        os.dup2(new_server.fileno(), fd)
        moved = socket.socket(fileno=fd)
        new_server.close()
        new_server = moved
        pairs.keep(moved)
    assert new_server.fileno() == fd
    new = Conn(new_server)

    with caplog.at_level(logging.WARNING, logger="turbocast.socket"):
        reader.add(new)  # no KeyError

    assert registered(reader) == {fd: new}
    assert "replaced a stale reader registration" in caplog.text
    reader.remove(old)  # the old one's late removal leaves the new one alone
    assert registered(reader) == {fd: new}
    new_client.sendall(b"still read")
    assert new.got.wait(5)
    assert new.reads == [b"still read"]


def test_remove_waits_for_a_read_in_progress(pairs):
    reader = Readers()
    server, client = pairs()
    reading, release = threading.Event(), threading.Event()

    class Slow(Conn):
        def read_ready(self) -> bool:
            reading.set()
            release.wait(5)
            return super().read_ready()

    conn = Slow(server)
    reader.add(conn)
    client.sendall(b"x")
    assert reading.wait(5)

    removed = threading.Event()

    def remove() -> None:
        reader.remove(conn)
        removed.set()

    remover = threading.Thread(target=remove)
    remover.start()
    assert not removed.wait(0.2)  # the reader is still inside read_ready()
    release.set()
    assert removed.wait(5)
    remover.join()


def test_a_read_that_raises_drops_only_that_socket(pairs, caplog):
    reader = Readers()
    bad_server, bad_client = pairs()
    good_server, good_client = pairs()

    class Broken(Conn):
        def read_ready(self) -> bool:
            raise RuntimeError("boom")

    bad, good = Broken(bad_server), Conn(good_server)
    reader.add(bad)
    reader.add(good)
    bad_client.sendall(b"x")
    wait_for(lambda: bad not in reader, timeout=5, what="the failing connection to go")
    assert "reading a socket failed" in caplog.text
    good_client.sendall(b"y")
    assert good.got.wait(5)


def test_adding_a_closed_socket_fails_without_registering(pairs):
    reader = Readers()
    server, _ = pairs()
    conn = Conn(server)
    server.close()

    with pytest.raises(ValueError):
        reader.add(conn)

    assert conn not in reader


def test_the_process_has_one_readers():
    assert readers() is readers()
