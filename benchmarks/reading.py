"""Query reading cost: CPU per hybrid text search in-process, with [understand] on and off, fresh and cached.

    vitrina bench reading [--rounds 3] [--queries queries_dev.csv,evaluation/natural_queries.csv]

Both arms share one store and one text encoder and run the same queries in turn, `--rounds` times; "fresh" clears
the query-vector and reading caches first (every query encoded and read), "cached" repeats the same queries
(what a popular query costs). CPU time of this process per search, so other work on the machine counts less than
in wall-clock figures (`vitrina bench http` measures those through the server).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.http_inputs import read_queries
from vitrina.config import Config

NATURAL = Path(__file__).resolve().parents[1] / "evaluation" / "natural_queries.csv"  # query_id,query,... columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="passes per arm and state (default 3)")
    parser.add_argument("--queries", help="comma-separated query CSVs (query_id,query); default: queries_dev.csv "
                                          "beside the catalogue and evaluation/natural_queries.csv")


def _cpu_ms(service: Any, requests: Sequence[Any], fresh: bool) -> float:
    if fresh:
        service._query_cache.clear()
        if service._reader is not None:
            service._reader[1]._cache.clear()
    start = time.process_time()
    for req in requests:
        service.search(req)
    return 1000.0 * (time.process_time() - start) / len(requests)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from search.query.engine import SearchService
    from search.query.request import parse_search

    paths = [Path(p) for p in args.queries.split(",")] if args.queries else \
        [Path(cfg.catalogue.path).parent / "queries_dev.csv", NATURAL]
    texts = [t for p in paths for t in read_queries(p, 0)]
    on = SearchService(cfg.replace(understand={"enabled": True}))
    on.warm()
    off = SearchService(cfg.replace(understand={"enabled": False}), store=on.store)
    requests = [parse_search({"q": [t], "k": ["10"], "mode": ["hybrid"]}, cfg) for t in texts]
    for req in requests[:20]:  # load everything once
        on.search(req)
        off.search(req)
    figures: dict[str, list[float]] = {}
    for _ in range(max(args.rounds, 1)):
        for state in ("fresh", "cached"):
            for name, service in (("off", off), ("on", on)):
                figures.setdefault(f"{state} {name}", []).append(_cpu_ms(service, requests, state == "fresh"))
    print(f"{len(requests)} queries from {', '.join(str(p) for p in paths)}; CPU ms per hybrid search "
          f"(median of {max(args.rounds, 1)} passes)")
    for key, values in figures.items():
        print(f"  {key:12s} {statistics.median(values):7.2f}   passes: {', '.join(f'{v:.2f}' for v in values)}")
    on.close()
    return 0
