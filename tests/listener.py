"""A socket that listens and never answers: proves that a refused target saw no connection."""

from __future__ import annotations

import contextlib
import socket


class Listener:
    """A socket that listens and never answers; counts connections that reached it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()
        self.accepted: list[socket.socket] = []

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def connections(self) -> int:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.accepted.append(self.sock.accept()[0])
        return len(self.accepted)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()
