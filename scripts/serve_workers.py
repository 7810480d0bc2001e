"""Several serving processes on one listening socket (pre-fork): the kernel hands each connection to one worker;
a worker that dies is replaced; SIGTERM or SIGINT stops them all."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Callable

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


def run_workers(n: int, work: Callable[[], int], reaped: Callable[[int], object] | None = None) -> int:
    """Fork `n` processes that each run `work()` (which serves the inherited socket) until told to stop; returns
    0 after a clean stop, 1 when workers keep dying at start. `reaped(pid)` is called for each worker that ended
    (e.g. to remove what it left behind)."""
    children: dict[int, float] = {}
    stopping = False
    quick_deaths = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker: default signal handling, its own app, store and models
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
        children[pid] = time.monotonic()
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
        for _ in range(n):
            spawn()
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
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
            spawn()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 1 if quick_deaths >= MAX_QUICK_DEATHS else 0
