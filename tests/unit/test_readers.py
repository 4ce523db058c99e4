"""The process's one reader: every socket read by a single thread, none written."""

from __future__ import annotations

import socket
import threading

from app.turbo.readers import Readers, SharedReader


class Conn:
    """A connection stand-in: records reads; gone at EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads: list[bytes] = []
        self.gone = threading.Event()
        self.got = threading.Event()

    def read_ready(self) -> bool:
        data = self.sock.recv(4096)
        if not data:
            self.gone.set()
            return False
        self.reads.append(data)
        self.got.set()
        return True


def test_one_reader_thread_serves_many_sockets_and_drops_them_at_eof():
    readers = Readers()
    pairs = [socket.socketpair() for _ in range(3)]
    conns = [Conn(server) for server, _ in pairs]
    try:
        for conn in conns:
            readers.add(conn)
        names = [t.name for t in threading.enumerate()]
        assert names.count("turbo-reader") >= 1
        for i, (_, client) in enumerate(pairs):
            client.sendall(f"hello {i}".encode())
        for i, conn in enumerate(conns):
            assert conn.got.wait(5)
            assert conn.reads == [f"hello {i}".encode()]
        pairs[0][1].close()  # EOF on the first
        assert conns[0].gone.wait(5)
        assert conns[0].sock not in [k.fileobj for k in readers._selector.get_map().values()]
        readers.remove(conns[1])
        readers.remove(conns[1])  # twice is harmless
    finally:
        for server, client in pairs:
            server.close()
            client.close()


def test_shared_reader_stands_in_for_simple_websockets_thread():
    class Server:
        def _thread(self) -> None:  # what simple-websocket would run
            raise AssertionError("never started as a thread")

    server = Server()
    stand_in = SharedReader(target=server._thread)
    assert stand_in.conn is server
    assert stand_in.name == "turbo-reader"
    stand_in.join(0.1)
