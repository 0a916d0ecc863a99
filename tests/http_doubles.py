"""Loopback HTTP servers that misbehave on purpose, for the clients' deadline and retry tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class TricklingServer:
    """Answers every request one byte every ``interval`` seconds, for at most ``max_bytes`` bytes per connection.

    ``where="headers"`` trickles the status line and headers; ``where="body"`` sends the headers at
    once and trickles a body announced as 1,000 bytes. Binds 127.0.0.1 only; ``connections``
    counts the requests received, and ``closed_after`` the seconds each connection lasted.
    """

    def __init__(self, where: str = "body", interval: float = 0.2, max_bytes: int = 50) -> None:
        self.where, self.interval, self.max_bytes = where, interval, max_bytes
        self.connections = 0
        self.closed_after: list[float] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        start = time.monotonic()
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:  # the request's headers (its body is ignored)
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.connections += 1
                if self.where == "body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
                    slow = b'{"result": [' + b" " * 1000
                else:
                    slow = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000
                for byte in slow[: self.max_bytes]:
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:  # the client gave up and closed the connection
                pass
            finally:
                self.closed_after.append(time.monotonic() - start)

    @contextmanager
    def running(self) -> Iterator[TricklingServer]:
        """Serve in a background thread within the block."""
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._sock.close()
            thread.join(5)
            for t in self._threads:
                t.join(5)
