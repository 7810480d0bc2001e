"""`vitrina serve`: the search service behind waitress (threads from [web].threads)."""

from __future__ import annotations

import argparse
import logging

from vitrina.config import Config
from vitrina.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve the search API and page with waitress")
    p.add_argument("--host", help="interface to listen on (default [web].host)")
    p.add_argument("--port", type=int, help="port (default [web].port)")
    p.add_argument("--threads", type=int, help="worker threads (default [web].threads)")
    p.add_argument("--no-preload", action="store_true",
                   help="load the text model on the first search instead of at start")
    p.set_defaults(func=serve)


def serve(cfg: Config, args: argparse.Namespace) -> int:
    import waitress

    from web import create_app

    host = args.host or cfg.web.host
    port = cfg.web.port if args.port is None else args.port
    threads = cfg.web.threads if args.threads is None else args.threads
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0..65535, got {port}")
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    app = create_app(cfg)
    service = app.extensions["vitrina"]
    if not args.no_preload:
        service.warm()
        log.info("index %r holds %d items", cfg.store.alias, service.index_size())
    log.info("serving on http://%s:%d with %d threads", host, port, threads)
    waitress.serve(app, host=host, port=port, threads=threads, ident="vitrina",
                   max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 1024)
    app.extensions["vitrina_traffic"].close()  # the impression log synced, the online model checkpointed
    service.close()
    return 0
