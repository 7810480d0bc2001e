"""HTTP load benchmark of recommendations and also-bought against a running `vitrina serve` (loopback only)."""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from benchmarks.http import format_table, loopback_target, wait_ready
from benchmarks.http_load import Client, run_phase
from vitrina.config import Config
from vitrina.errors import BadInput

P95_MS = 30.0
PREFIX = "benchrec."


def shopper_events(transactions: Path, articles: Sequence[str], shoppers: int, seed: int) -> dict[str, list[dict]]:
    """Real purchase histories from transactions.csv, topped up with synthetic shoppers to `shoppers`."""
    known = set(articles)
    events: dict[str, list[dict]] = {}
    if transactions.is_file():
        with transactions.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row["article_id"] in known:
                    user = PREFIX + row["customer_id"][:16]
                    events.setdefault(user, []).append({"user_id": user, "item_id": row["article_id"],
                                                        "event": "purchase", "ts": row["t_dat"] + "T12:00:00+00:00"})
    rng = random.Random(seed)
    users = sorted(events)[:shoppers]
    events = {u: events[u] for u in users}
    for n in range(shoppers - len(events)):
        user = f"{PREFIX}synthetic-{n}"
        events[user] = [{"user_id": user, "item_id": rng.choice(articles), "event": rng.choice(("click", "cart",
                         "purchase")), "ts": "2020-05-01T12:00:00+00:00"} for _ in range(rng.randint(1, 8))]
    return events


def post_json(client: Client, path: str, body: Any, key: str, method: str = "POST") -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    status, data = client.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
    if status >= 400 and not (method == "DELETE" and status == 404):
        raise BadInput(f"{method} {path} -> HTTP {status}", data[:300].decode("utf-8", "replace"))
    return json.loads(data) if data else {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="a running `vitrina serve` on loopback")
    parser.add_argument("--shoppers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=600, help="per phase")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase at most")
    parser.add_argument("--api-key", default="", help="write key, when the server requires one")
    parser.add_argument("--warmup", type=int, default=20, help="requests (other random picks) before each phase")
    parser.add_argument("--server-pid", type=int, default=0, help="report the server's CPU per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the figures here too")


def run(cfg: Config, args: argparse.Namespace) -> int:
    host, port = loopback_target(args.url)
    health = wait_ready(host, port, 30.0)
    catalogue = Path(cfg.catalogue.path)
    with catalogue.open(newline="", encoding="utf-8") as f:
        articles = [row[cfg.catalogue.id] for row in csv.DictReader(f)]
    events = shopper_events(catalogue.parent / "transactions.csv", articles, args.shoppers, args.seed)
    client = Client(host, port, 30.0)
    t0 = time.perf_counter()
    flat = [e for evs in events.values() for e in evs]
    for start in range(0, len(flat), 500):
        post_json(client, "/api/feedback", flat[start:start + 500], args.api_key)
    print(f"server {args.url}: index {json.dumps(health.get('index'))}")
    print(f"fed {len(flat)} events for {len(events)} shoppers in {time.perf_counter() - t0:.1f}s")
    rng = random.Random(args.seed)
    users = sorted(events)
    bought = sorted({e["item_id"] for e in flat if e["event"] in ("cart", "purchase")})
    picks_u = [rng.choice(users) for _ in range(args.requests + args.warmup)]
    picks_i = [rng.choice(bought) for _ in range(args.requests + args.warmup)]
    rows = []
    try:
        for name, make in (
            ("recommendations", lambda i: ("GET", f"/api/users/{quote(picks_u[i], safe='')}/recommendations?k=12",
                                           None, {})),
            ("also-bought", lambda i: ("GET", f"/api/items/{quote(picks_i[i], safe='')}/also-bought?k=12", None, {})),
        ):
            if args.warmup:  # the last picks, not measured: first-use costs (caches, pages) are paid here
                run_phase(f"{name}-warmup", args.clients, lambda i, make=make: make(args.requests + i), host, port,
                          args.warmup, args.duration, 30.0)
            row = run_phase(name, args.clients, make, host, port, args.requests, args.duration, 30.0,
                            args.server_pid).summary()
            ok = row["p95_ms"] <= P95_MS and not row["errors"]
            row["verdict"] = f"{'PASS' if ok else 'MISS'} (p95<={P95_MS:.0f}ms)"
            rows.append(row)
    finally:
        for user in users:
            post_json(client, f"/api/users/{quote(user, safe='')}/profile", None, args.api_key, method="DELETE")
        client.close()
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "shoppers": len(events), "events": len(flat)}, indent=2))
    return 0
