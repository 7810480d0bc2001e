"""Several serving processes on one listening socket (pre-fork): each connection goes to the worker with the fewest
open connections (ConnectionBalance); a worker that dies is replaced; SIGTERM or SIGINT stops them all."""

from __future__ import annotations

import logging
import mmap
import os
import signal
import socket
import struct
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)
QUICK_DEATH_S = 10.0  # a worker dying sooner than this after its start counts towards giving up
MAX_QUICK_DEATHS = 3


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), inherited by forked workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class ConnectionBalance:
    """Least-connections accept across the workers of one listening socket.

    Left alone, the workers race for each new connection and a few long-lived ones (keep-alive clients, a load
    generator's 4 connections) often land 3:1 or 4:0, so one worker queues on its GIL while the other idles. Here
    each worker publishes, in a slot of shared memory made before the fork, how many connections it holds and when
    it last looked (its serving loop wakes at least every second), and listens for new ones only while no other
    live worker holds fewer. A worker silent for STALE_S (stuck, or dead and not yet replaced) is left out, so a
    connection always finds a worker."""

    SLOT = struct.Struct("<qd")  # open connections, monotonic time of the last look
    STALE_S = 3.0

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.shared = mmap.mmap(-1, self.SLOT.size * workers)  # anonymous and shared: inherited by the forks
        self.slot: int | None = None  # this worker's, set in the child by run_workers

    def publish(self, connections: int, now: float | None = None) -> None:
        assert self.slot is not None
        self.SLOT.pack_into(self.shared, self.slot * self.SLOT.size, connections,
                            time.monotonic() if now is None else now)

    def fewest_elsewhere(self, now: float | None = None) -> int | None:
        """The fewest connections a live other worker holds (None when there is none)."""
        now = time.monotonic() if now is None else now
        counts = [n for i in range(self.workers) if i != self.slot
                  for n, seen in [self.SLOT.unpack_from(self.shared, i * self.SLOT.size)]
                  if now - seen < self.STALE_S]
        return min(counts) if counts else None

    def my_turn(self, connections: int) -> bool:
        """Publish `connections` and say whether this worker should accept the next one."""
        now = time.monotonic()
        self.publish(connections, now)
        fewest = self.fewest_elsewhere(now)
        return fewest is None or connections <= fewest

    def attach(self, server: Any) -> None:
        """Make a waitress server listen only on its turn: its `readable` is asked before every wait of its loop,
        and asked again when a connection arrives, since the turn may have passed to another worker meanwhile (a
        worker that lets it be listens no more after this, so the one whose turn it is takes it)."""
        plain, accept = server.readable, server.handle_accept

        def readable() -> bool:
            return bool(plain()) and self.my_turn(len(server.active_channels))

        def handle_accept() -> None:
            if self.my_turn(len(server.active_channels)):
                accept()

        server.readable, server.handle_accept = readable, handle_accept
        self.publish(0)


def serve_wsgi(app: Any, sock: socket.socket, balance: ConnectionBalance | None = None, **adjustments: Any) -> None:
    """Serve `app` with waitress on the inherited socket, taking connections on this worker's turn."""
    import waitress

    # A worker serves one request at a time by design ([web].threads = 1). Before admit_when_idle the next request
    # waited in waitress's queue and waitress logged a warning for each ("Task queue depth is 1": 170,000 lines,
    # 12 MB, in one `vitrina bench http` run); now it mostly waits unread in its socket, but a pipelined request
    # still queues. Waiting is the plan, not an alarm; errors still show.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = waitress.create_server(app, sockets=[sock], **adjustments)
    admit_when_idle(server)
    if balance is not None and balance.slot is not None:
        balance.attach(server)
    server.run()


def admit_when_idle(server: Any) -> None:
    """Make a waitress server read its connections only while one of its task threads is free.

    Left alone, the serving loop reads and parses a request on one connection while a search for another runs,
    though no thread is free to serve it: the two threads then pass the GIL back and forth in the middle of the
    search (~0.15 ms of CPU a request with two connections a worker). Here that request waits in the socket's
    buffer until a task ends; the end of each task wakes the loop, which then reads it. Requests already read
    (pipelined ones) are served as before."""
    threads = max(1, int(server.adj.threads))
    lock = threading.Lock()
    pending = [0]  # tasks queued or running
    add_task, base = server.add_task, server.channel_class

    def counted_add_task(task: Any) -> None:
        add_task(task)  # counted once queued (a task thread that finishes it first takes the count to -1, then 0)
        with lock:
            pending[0] += 1

    class Channel(base):  # type: ignore[misc, valid-type]
        def readable(self) -> bool:
            return pending[0] < threads and bool(base.readable(self))

        def service(self) -> None:
            try:
                base.service(self)
            finally:
                with lock:
                    pending[0] -= 1
                self.server.pull_trigger()  # the loop looks again at the connections it left unread

    server.add_task, server.channel_class = counted_add_task, Channel


def exit_on_signal(signum: int, _frame: object) -> None:
    """A signal handler that unwinds the serving loop (so writes are checkpointed and files removed)."""
    raise SystemExit(0)


def run_in_child(work: Callable[[], int]) -> int:
    """Run `work()` in a forked process and return its exit status (so that this one loads no model and starts no
    thread before it forks the workers)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = work()
        except BaseException:  # noqa: BLE001 - logged; the status says it failed
            log.exception("process %d failed", os.getpid())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_workers(n: int, work: Callable[[], int], reaped: Callable[[int], object] | None = None,
                balance: ConnectionBalance | None = None) -> int:
    """Fork `n` processes that each run `work()` (which serves the inherited socket) until told to stop; returns
    0 after a clean stop, 1 when workers keep dying at start. `reaped(pid)` is called for each worker that ended
    (e.g. to remove what it left behind). With `balance`, each worker has its slot there (a replacement takes
    the slot of the worker it replaces)."""
    children: dict[int, float] = {}
    slots: dict[int, int] = {}
    stopping = False
    quick_deaths = 0

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: default signal handling, its own app, store and models
            if balance is not None:
                balance.slot = slot  # published once it serves (attach): a loading worker takes no turn
            signal.signal(signal.SIGTERM, exit_on_signal)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = work()
            except SystemExit as e:
                code = int(e.code or 0)
            except BaseException:  # noqa: BLE001 - logged, then the parent decides
                log.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        children[pid], slots[pid] = time.monotonic(), slot
        log.info("worker %d started (%d of %d)", pid, len(children), n)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in range(n):
            spawn(slot)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started, slot = children.pop(pid, None), slots.pop(pid, 0)
            if reaped is not None and started is not None:
                try:
                    reaped(pid)
                except Exception:  # noqa: BLE001 - cleaning up must not stop the service
                    log.exception("cleaning up after worker %d failed", pid)
            if stopping or started is None:
                continue
            log.warning("worker %d exited (status %d); starting another", pid, status)
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            if quick_deaths >= MAX_QUICK_DEATHS:
                log.error("workers keep dying at start: stopping")
                stop(signal.SIGTERM, None)
                continue
            spawn(slot)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 1 if quick_deaths >= MAX_QUICK_DEATHS else 0
