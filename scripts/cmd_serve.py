"""`vitrina serve`: the search service behind waitress (threads from [web].threads), in one or several processes."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

from vitrina.config import Config
from vitrina.errors import ConfigError, VitrinaError

if TYPE_CHECKING:
    from scripts.serve_workers import ConnectionBalance

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve the search API and page with waitress")
    p.add_argument("--host", help="interface to listen on (default [web].host)")
    p.add_argument("--port", type=int, help="port (default [web].port)")
    p.add_argument("--threads", type=int, help="worker threads per process (default [web].threads)")
    p.add_argument("--workers", type=int,
                   help="serving processes sharing the port (default [web].workers); on the embedded store each "
                        "searches its own copy of the index, kept up to date from the change log")
    p.add_argument("--no-preload", action="store_true",
                   help="load the text model on the first search instead of at start")
    p.set_defaults(func=serve)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); '0.0.0.0', '::' and names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_open_writes(cfg: Config, host: str) -> None:
    """Refuse to listen beyond loopback without an API key, unless [web].open_writes says so explicitly."""
    from web.deps import api_keys

    if is_loopback(host) or api_keys(cfg) or cfg.web.open_writes:
        return
    raise ConfigError(f"refusing to serve on {host!r} without an API key: anyone who reaches it could change "
                      "products, record feedback, and read or forget shoppers",
                      detail="set [web].api_keys (or $VITRINA_API_KEYS), listen on 127.0.0.1, or set "
                             "[web].open_writes = true to accept open writes")


def workers_refused(cfg: Config) -> str | None:
    """Why this deployment cannot be served by several processes (None when it can: a Qdrant server by URL, or
    the embedded store with a copy per process, and no online click model)."""
    if cfg.store.backend == "qdrant" and not cfg.store.url:
        return "qdrant-client's local mode (a folder or memory) is one process"
    from search.online.experiments import Experiments

    if cfg.ranker.online or any(c.ranker.online for c in Experiments(cfg).configs.values()):
        return ("the online click model ([ranker].online, here or in an experiment's variant) learns in one "
                "process: several would each learn from part of the feedback and overwrite one checkpoint")
    return None


def service_url(host: str, port: int) -> str:
    """How a client on this machine reaches the service."""
    connect = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{connect}]:{port}" if ":" in connect else f"http://{connect}:{port}"


def serve(cfg: Config, args: argparse.Namespace) -> int:
    from web.client import service_file
    from scripts.serve_workers import ConnectionBalance, exit_on_signal, listen, run_in_child, run_workers

    host = args.host or cfg.web.host
    port = cfg.web.port if args.port is None else args.port
    threads = cfg.web.threads if args.threads is None else args.threads
    workers = cfg.web.workers if args.workers is None else args.workers
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0..65535, got {port}")
    if threads < 1 or workers < 1:
        raise ConfigError(f"threads and workers must be >= 1, got {threads} and {workers}")
    check_open_writes(cfg, host)
    why = workers_refused(cfg) if workers > 1 else None
    if why:
        raise ConfigError(f"--workers {workers}: {why}",
                          detail="serve with --workers 1 (or [web].workers = 1); for the store: run a Qdrant server "
                                 'and set [store].backend = "qdrant", url = "http://...", or the embedded store '
                                 '(backend = "edge"), then reindex into it')
    copies = workers > 1 and cfg.store.backend == "edge"
    try:
        sock = listen(host, port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    url = service_url(host, sock.getsockname()[1])
    announce = service_file(cfg)
    announce.parent.mkdir(parents=True, exist_ok=True)
    announce.write_text(json.dumps({"url": url, "pid": os.getpid(), "workers": workers, "started": time.time()}))
    log.info("serving on %s (%s) with %d process(es) x %d threads%s", url, host, workers, threads,
             ", each on its own copy of the index" if copies else "")
    try:
        if workers == 1:
            signal.signal(signal.SIGTERM, exit_on_signal)
            return run_app(cfg, sock, threads, not args.no_preload)
        balance = ConnectionBalance(workers)
        if not copies:
            return run_workers(workers, lambda: run_app(cfg, sock, threads, not args.no_preload, balance=balance),
                               balance=balance)
        from indexer.replica import clean_replicas

        clean_replicas(cfg)  # copies of workers killed with the last service
        run_in_child(lambda: recover_live(cfg))  # the collection behind the alias: every logged write in
        try:
            return run_workers(workers, lambda: run_app(cfg, sock, threads, not args.no_preload, copy=True,
                                                        balance=balance),
                               reaped=lambda pid: clean_replicas(cfg, pid), balance=balance)
        finally:
            clean_replicas(cfg)
            run_in_child(lambda: recover_live(cfg))  # ... and again: the workers wrote only into their copies
    finally:
        try:
            if json.loads(announce.read_text()).get("pid") == os.getpid():
                announce.unlink()
        except (OSError, ValueError):
            pass
        sock.close()


def recover_live(cfg: Config) -> int:
    """Apply to the collection behind the alias the logged writes it lacks (what a single process does at start)."""
    from indexer.writer import ItemWriter
    from search.store.factory import open_store

    store = open_store(cfg)
    try:
        writer = ItemWriter(cfg, store)
        try:
            log.info("collection %s is up to date with the change log", writer.recover())
        finally:
            writer.close()
    except VitrinaError as e:
        log.warning("the collection behind the alias was not brought up to date: %s", e.message)
        return 1
    finally:
        store.close()
    return 0


def settle_heap() -> None:
    """Collect what loading left behind, then freeze the rest (models, the payload cache, the reader's tables: ~120k
    objects once warm) out of the garbage collector's passes. A full pass over them took 21-27 ms, and one came now
    and then in the middle of a shopper's request: wrk, text search, 30 s phases, two runs each way: p99 16.6 / 16.0
    -> 13.6 / 13.3 ms and max 78-81 -> 33-36 ms at 4 connections, max 113-151 -> 79 ms at 16, the same CPU a search.
    Frozen objects still go when nothing refers to them; a frozen cycle left garbage later stays (rare: an alias
    swap's old tables)."""
    gc.collect()
    gc.freeze()


def run_app(cfg: Config, sock: socket.socket, threads: int, preload: bool, copy: bool = False,
            balance: ConnectionBalance | None = None) -> int:
    """One serving process: its own app, store and models; logged writes a crash left unapplied go in first.
    `copy`: it searches its own copy of the index (indexer/replica.py) rather than the collection itself.
    `balance`: it takes new connections on its turn among the workers (least connections)."""
    from scripts.serve_workers import serve_wsgi

    from web import create_app
    from web.api_write import close_writer, writer

    store = None
    if copy:
        from indexer.replica import Replica, ReplicaStore

        store = ReplicaStore(Replica(cfg))
        try:
            store.replica.ready()
        except VitrinaError as e:  # e.g. no index yet: copied on the first request that finds one
            log.warning("process %d serves no copy of the index yet: %s", os.getpid(), e.message)
    app = create_app(cfg, store=store)
    service = app.extensions["vitrina"]
    try:
        if preload:
            service.warm()
            log.info("index %r holds %d items", cfg.store.alias, service.index_size())
        try:
            with app.app_context():
                writer().recover()
                if preload and cfg.web.warm_writes:
                    writer().warm()
        except VitrinaError as e:
            log.warning("writes not checked against the change log yet: %s", e.message)
        settle_heap()
        serve_wsgi(app, sock, balance, threads=threads, ident="vitrina",
                   max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 1024)
    finally:
        close_writer(app)
        app.extensions["vitrina_traffic"].close()  # the impression log synced, the online model checkpointed
        service.close()
    return 0
