"""FaultProxy (cellsd.testing_faults) against a plain echo server on loopback:
each knob does what it says, so the real-process scenarios can rely on it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from cellsd.testing_faults import FaultProxy


@contextmanager
def echo_server() -> Iterator[int]:
    """A loopback server that echoes every connection; its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def read_for(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(0.05)
    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionError:  # reset: closed too
            break
        if not data:
            break
        out += data
    return out


class FaultProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        cm = echo_server()
        port = cm.__enter__()
        self.addCleanup(cm.__exit__, None, None, None)
        self.proxy = FaultProxy(port).start()
        self.addCleanup(self.proxy.stop)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=2)
        self.addCleanup(sock.close)
        return sock

    def test_forwards(self) -> None:
        """Without faults, bytes go through both ways unchanged."""
        sock = self.connect()
        sock.sendall(b"hello")
        self.assertEqual(read_for(sock, 0.3), b"hello")

    def test_duplicate(self) -> None:
        """duplicate: each write arrives twice (and the echo twice again)."""
        self.proxy.duplicate = True
        sock = self.connect()
        sock.sendall(b"ab")
        self.assertEqual(read_for(sock, 0.3), b"ab" * 4)

    def test_drop(self) -> None:
        """drop_rate 1: every write is discarded."""
        self.proxy.drop_rate = 1.0
        sock = self.connect()
        sock.sendall(b"lost")
        self.assertEqual(read_for(sock, 0.3), b"")
        self.assertGreater(self.proxy.stats["dropped"], 0)

    def test_delay(self) -> None:
        """delay: nothing arrives before the delay (twice: there and back)."""
        self.proxy.delay = 0.2
        sock = self.connect()
        start = time.monotonic()
        sock.sendall(b"slow")
        self.assertEqual(read_for(sock, 0.3), b"")
        self.assertEqual(read_for(sock, 0.4), b"slow")
        self.assertGreaterEqual(time.monotonic() - start, 0.4)

    def test_cut_and_refuse(self) -> None:
        """cut closes open connections; refuse closes new ones at once."""
        sock = self.connect()
        sock.sendall(b"x")
        self.assertEqual(read_for(sock, 0.2), b"x")
        self.proxy.cut()
        self.assertEqual(read_for(sock, 0.3), b"")  # closed: recv gave b""
        self.assertEqual(self.proxy.connections(), 0)
        self.proxy.refuse = True
        other = self.connect()
        other.sendall(b"y")
        self.assertEqual(read_for(other, 0.3), b"")
