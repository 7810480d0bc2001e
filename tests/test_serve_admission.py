"""scripts/serve_workers.admit_when_idle: a one-thread waitress server leaves a second connection's request unread
while a request runs, then serves it as soon as the first ends."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest

waitress = pytest.importorskip("waitress")


def _app(started: threading.Event, release: threading.Event, served: list[str]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/slow":
            started.set()
            release.wait(10)
        served.append(path)
        body = path.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _get(port: int, path: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return conn


def _body(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith((b"/slow", b"/fast")):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.rpartition(b"\r\n\r\n")[2]


@pytest.fixture
def server() -> Iterator[tuple[Any, threading.Event, threading.Event, list[str]]]:
    from scripts.serve_workers import admit_when_idle

    started, release, served = threading.Event(), threading.Event(), []
    srv = waitress.create_server(_app(started, release, served), host="127.0.0.1", port=0, threads=1)
    admit_when_idle(srv)
    stop = threading.Event()

    def serve() -> None:  # the serving loop, a pass at a time, so the test can end it before closing its sockets
        while not stop.is_set():
            srv.asyncore.loop(timeout=0.05, map=srv._map, count=1)

    loop = threading.Thread(target=serve, daemon=True)
    loop.start()
    try:
        yield srv, started, release, served
    finally:
        release.set()
        stop.set()
        loop.join(10)
        srv.close()


def test_a_request_waits_unread_while_the_only_thread_is_busy_and_is_served_when_it_frees(server: Any) -> None:
    srv, started, release, served = server
    port = srv.socket.getsockname()[1]
    slow = _get(port, "/slow")
    assert started.wait(10)
    fast = _get(port, "/fast")
    time.sleep(0.3)  # the serving loop has had time to look at the second connection
    # without the gate the loop reads and parses it, and queues its task behind the running one
    assert not srv.task_dispatcher.queue
    assert served == []
    t0 = time.perf_counter()
    release.set()
    assert _body(slow) == b"/slow"
    assert _body(fast) == b"/fast"
    # the end of the first task wakes the loop to read the second (not the loop's 1 s timeout)
    assert time.perf_counter() - t0 < 0.5
    assert served == ["/slow", "/fast"]
    for conn in (slow, fast):
        conn.close()


def test_keep_alive_requests_on_one_connection_are_all_served(server: Any) -> None:
    srv, _, release, served = server
    release.set()
    port = srv.socket.getsockname()[1]
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    for _ in range(20):
        conn.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _body(conn) == b"/fast"
    conn.close()
    assert served == ["/fast"] * 20
