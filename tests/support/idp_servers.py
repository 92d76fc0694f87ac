"""Misbehaving IdPs and a plain upstream as raw-socket servers on 127.0.0.1 (issue 12 item 11 tests)."""

from __future__ import annotations

import socket
import threading
import time

from tests.support.servers import RawSocketServer


class TricklingIdp(RawSocketServer):
    """Answers an active token, one byte every ``pause`` seconds: per-read timeouts never fire."""

    threaded = True

    def __init__(self, where: str, pause: float = 0.02) -> None:
        super().__init__()
        self.where = where
        self.pause = pause
        self.sent = 0
        self.cut_off = threading.Event()

    def handle(self, conn: socket.socket) -> None:
        body = b'{"active": true, "sub": "alice"}' + b" " * 400
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"p" * 400
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        with conn:
            conn.recv(65536)
            fast, slow = (b"", head + body) if self.where == "head" else (head, body)
            try:
                conn.sendall(fast)
                for index in range(len(slow)):
                    conn.sendall(slow[index:index + 1])
                    self.sent += 1
                    if self._stop.wait(self.pause):
                        return
            except OSError:
                self.cut_off.set()
                return
            time.sleep(0.2)


class HeldIdp(RawSocketServer):
    """An IdP that holds every call until released (it "takes 10 s"), then says inactive; counts calls."""

    threaded = True

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            with self._lock:
                self.calls += 1
            self.entered.release()
            self.release.wait(30)
            conn.sendall(_answer(b'{"active": false}', b"application/json"))


class PlainUpstream(RawSocketServer):
    threaded = True

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(_answer(b"upstream", b"text/plain"))


def _answer(body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
