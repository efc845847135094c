"""Small servers on 127.0.0.1 for the stream tests: an HTTP server that serves bytes (a video made from real photos),
redirects, or a playlist, and can be stopped mid-stream and started again on the same port; and a silent server that
accepts connections and never answers. Each counts what it was asked, is bounded in connections and seconds, and is
stopped by the test (context managers)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# what a handler sends for a request path: (status line + headers, body bytes, close after how many body bytes)
Reply = tuple[str, bytes, int | None]


@dataclass
class HttpServer:
    """``routes`` maps a path to a function giving the reply for the n-th request to it (0-based). The reply is sent in
    chunks of ``chunk`` bytes every ``pace_s`` seconds; ``cut`` closes the connection after that many body bytes.
    ``requests`` lists the paths asked for; ``stop()`` closes the listening socket and every open connection (a server
    that dies), ``start()`` listens again on the same port (one that comes back)."""

    routes: dict[str, Callable[[int], Reply]]
    chunk: int = 188 * 20
    pace_s: float = 0.0
    max_connections: int = 50
    deadline_s: float = 120.0
    port: int = 0
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._started_at = time.monotonic()
        self._count = 0

    def start(self) -> HttpServer:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(8)
        s.settimeout(0.2)
        self.port = s.getsockname()[1]
        self._listener = s
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, args=(s, self._stopped), daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set() and time.monotonic() - self._started_at < self.deadline_s:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with self._lock:
                self._count += 1
                if self._count > self.max_connections:
                    conn.close()
                    continue
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, stopped), daemon=True).start()
        listener.close()

    def _serve(self, conn: socket.socket, stopped: threading.Event) -> None:
        try:
            conn.settimeout(5.0)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                data = conn.recv(1024)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode("ascii", "replace")
            with self._lock:
                n = sum(1 for p in self.requests if p == path)
                self.requests.append(path)
            route = self.routes.get(path)
            status, body, cut = route(n) if route else ("HTTP/1.0 404 Not Found\r\n", b"", None)
            conn.sendall(status.encode("ascii") + b"\r\n")
            end = len(body) if cut is None else min(cut, len(body))
            for at in range(0, end, self.chunk):
                if stopped.is_set():
                    return
                conn.sendall(body[at:min(at + self.chunk, end)])
                if self.pace_s:
                    time.sleep(self.pace_s)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        time.sleep(0.3)  # the accept loop sees the flag and leaves

    def __enter__(self) -> HttpServer:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ok(body_type: str = "video/mp2t", length: int | None = None) -> str:
    """A 200 status line and headers (HTTP/1.0: the body ends when the connection closes, as a live stream's does)."""
    return f"HTTP/1.0 200 OK\r\nContent-Type: {body_type}\r\n" + (f"Content-Length: {length}\r\n" if length is not None else "")


@dataclass
class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (a camera that hangs): ``accepted`` counts them."""

    deadline_s: float = 60.0
    port: int = 0
    accepted: int = 0

    def __enter__(self) -> SilentServer:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < self.deadline_s:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            self.accepted += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self._conns:
            c.close()
        self._sock.close()
