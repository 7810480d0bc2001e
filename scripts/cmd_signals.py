"""`vitrina rebuild-signals`: recompute co-bought counts, popularity (and shopper segments) from the event log."""

from __future__ import annotations

import argparse
import json
import logging
import time

from search.shopper.profiles import FILENAME, ProfileStore
from vitrina.config import Config
from vitrina.errors import NotFound

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("rebuild-signals",
                       help="wipe and rebuild co-occurrence, popularity and shopper segments from the event log")
    p.set_defaults(func=rebuild_signals)


def rebuild_signals(cfg: Config, args: argparse.Namespace) -> int:
    path = cfg.data_dir / FILENAME
    if not path.is_file():
        raise NotFound(f"no profile store at {path}", "nothing recorded yet: POST /api/feedback first")
    start = time.perf_counter()
    store = ProfileStore(path, cfg.personal)
    try:
        stats = store.rebuild_signals()
        if cfg.segments.k > 0:  # the interest groups are rebuilt with the signals
            from search.shopper.segments import rebuild

            groups = rebuild(store, cfg)
            stats["segments"] = 0 if groups is None else int(groups.centroids.shape[0])
    finally:
        store.close()
    stats_out = {**stats, "seconds": round(time.perf_counter() - start, 3), "store": str(path)}
    print(json.dumps(stats_out))
    log.info("rebuilt signals from %d events: %d items, %d co-bought pairs", stats["events"], stats["items"],
             stats["pairs"])
    return 0
