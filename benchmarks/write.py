"""Write benchmark: real catalogue products (new ids, their real photos) sent to a running `vitrina serve` through
`POST /api/items` in batches, as fast as one client can (items/s), or paced at --rate items/s for --duration
seconds as a background load while search is measured (e.g. with wrk); --cleanup deletes what it wrote."""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.http import loopback_target
from benchmarks.http_inputs import catalogue_rows
from benchmarks.http_load import percentile, process_cpu_s
from vitrina.config import Config
from vitrina.errors import BadInput
from web.client import ServiceClient, api_key


MAX_IN_FLIGHT = 2  # paced writes: at most this many requests waiting for an answer (a shop feed, not a flood)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="running server (loopback only)")
    parser.add_argument("--api-key", help="write key (default $VITRINA_API_KEY, else the first configured key)")
    parser.add_argument("--batch-size", type=int, default=100, help="items per request (default 100)")
    parser.add_argument("--batches", type=int, default=10, help="requests in the throughput run (default 10)")
    parser.add_argument("--rate", type=float, default=0.0, help="> 0: pace writes at this many items/s instead")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of paced writing (with --rate)")
    parser.add_argument("--cleanup", action="store_true", help="delete the written items at the end")
    parser.add_argument("--server-pid", type=int, default=0, help="server process, to report its CPU time")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)


def products(cfg: Config, seed: int, run: str) -> Any:
    """Catalogue rows with new ids (bench-<run>-<n>), endlessly, in a shuffled order."""
    rows = [r for r in catalogue_rows(cfg) if r.get(cfg.catalogue.title)]
    random.Random(seed).shuffle(rows)
    n = 0
    while True:
        for row in rows:
            yield {**row, cfg.catalogue.id: f"bench-{run}-{n}"}
            n += 1


def run(cfg: Config, args: argparse.Namespace) -> int:
    loopback_target(args.url)
    if args.batch_size < 1 or args.batches < 1 or args.rate < 0:
        raise BadInput("--batch-size and --batches must be >= 1, --rate >= 0")
    client = ServiceClient(args.url, api_key(cfg, args.api_key))
    source = products(cfg, args.seed, f"{int(time.time())}")
    written: list[str] = []
    latencies: list[float] = []
    errors = 0
    cpu0 = process_cpu_s(args.server_pid) if args.server_pid else None
    t0 = time.perf_counter()
    if args.rate > 0:  # paced: a batch every batch_size / rate seconds, whatever the answers' latency (open loop)
        interval = args.batch_size / args.rate
        due = t0
        with ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:
            sent = []
            while time.perf_counter() - t0 < args.duration:
                batch = [next(source) for _ in range(args.batch_size)]
                sent.append(pool.submit(_send, client, batch, written, latencies))
                due += interval
                time.sleep(max(0.0, due - time.perf_counter()))
            errors += sum(f.result() for f in sent)
    else:
        for _ in range(args.batches):
            errors += _send(client, [next(source) for _ in range(args.batch_size)], written, latencies)
    wall = time.perf_counter() - t0
    cpu1 = process_cpu_s(args.server_pid) if args.server_pid else None
    lat = sorted(latencies)
    out = {"items": len(written), "errors": errors, "batch_size": args.batch_size, "wall_s": round(wall, 2),
           "items_per_s": round(len(written) / wall, 1) if wall else 0.0,
           "request_p50_ms": round(percentile(lat, 50), 1), "request_p95_ms": round(percentile(lat, 95), 1),
           "server_cpu_ms_per_item": round(1000 * (cpu1 - cpu0) / max(1, len(written)), 1)
           if cpu0 is not None and cpu1 is not None else None}
    if args.cleanup and written:
        for start in range(0, len(written), 1000):
            client.delete(written[start:start + 1000])
        out["deleted"] = len(written)
    print(json.dumps(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0 if not errors else 1


def _send(client: ServiceClient, batch: list[dict[str, Any]], written: list[str], latencies: list[float]) -> int:
    """Post one batch; the ids written go to `written`; returns the items that failed."""
    t = time.perf_counter()
    results = client.upsert(batch)
    latencies.append(1000 * (time.perf_counter() - t))
    written += [r["id"] for r in results if r["status"] != "error"]
    return sum(r["status"] == "error" for r in results)
