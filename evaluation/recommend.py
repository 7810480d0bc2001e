"""Recommendation section: replay purchases before a cutoff via POST /api/feedback, then MAP@12 and HR@12."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evaluation.client import ApiClient, ApiError, forget, open_client
from evaluation.data import Purchase, load_catalogue, load_purchases
from evaluation.metrics import average_precision_at_k, hit_rate_at_k
from search.shopper.recommend import SOURCES
from vitrina.config import Config, load_config
from vitrina.errors import BadInput

log = logging.getLogger(__name__)

USER_PREFIX = "evalrec."  # this section's shoppers, forgotten before and after the run
BATCH = 500
POPULAR_DAYS = 30
END = "2020-06-01"  # later purchases are held back by the data set itself


def epoch(day: str) -> float:
    """YYYY-MM-DD (UTC midnight) as epoch seconds."""
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


def shopper(customer: str) -> str:
    return USER_PREFIX + customer


def split(purchases: Sequence[Purchase], cutoff: str, end: str, known: set[str] | None = None
          ) -> tuple[list[Purchase], dict[str, set[str]]]:
    """History (before the cutoff) and each shopper's distinct purchases in [cutoff, end)."""
    history = [p for p in purchases if p.day < cutoff and (known is None or p.item in known)]
    targets: dict[str, set[str]] = defaultdict(set)
    for p in purchases:
        if cutoff <= p.day < end and (known is None or p.item in known):
            targets[p.user].add(p.item)
    return history, dict(targets)


def popular_last_days(history: Sequence[Purchase], cutoff: str, days: int, k: int) -> list[str]:
    """The k items bought most in the `days` before the cutoff (ties: the most recently bought first)."""
    start = (datetime.strptime(cutoff, "%Y-%m-%d") - timedelta(days=days)).strftime("%Y-%m-%d")
    recent = [p for p in history if start <= p.day < cutoff]
    counts = Counter(p.item for p in recent)
    last = {p.item: p.day for p in recent}
    return [i for i, _ in sorted(counts.items(), key=lambda t: (-t[1], _neg(last[t[0]]), t[0]))[:k]]


def _neg(day: str) -> str:
    return "".join(chr(255 - ord(c)) for c in day)  # sorts dates newest first


def buy_again_then_popular(history: Sequence[Purchase], users: Sequence[str], popular: Sequence[str], k: int
                           ) -> dict[str, list[str]]:
    """Each shopper's past purchases, most recent first, then the popular list, k in all."""
    past: dict[str, list[str]] = defaultdict(list)
    for p in sorted(history, key=lambda p: p.day, reverse=True):
        if p.item not in past[p.user]:
            past[p.user].append(p.item)
    out = {}
    for u in users:
        ranked = list(past.get(u, []))
        ranked += [i for i in popular if i not in ranked]
        out[u] = ranked[:k]
    return out


def summarise(runs: Mapping[str, Mapping[str, Sequence[str]]], targets: Mapping[str, set[str]],
              users: Sequence[str], k: int) -> dict[str, dict[str, float]]:
    """MAP@k (H&M Kaggle AP@k averaged over shoppers) and HR@k (share of shoppers with a hit) per run."""
    out = {}
    for name, ranking in runs.items():
        aps = [average_precision_at_k(ranking.get(u, []), targets[u], k) for u in users]
        hrs = [hit_rate_at_k(ranking.get(u, []), targets[u], k) for u in users]
        n = max(len(users), 1)
        out[name] = {f"map@{k}": sum(aps) / n, f"hr@{k}": sum(hrs) / n}
    return out


def ratio_interval(runs: Mapping[str, Mapping[str, Sequence[str]]], targets: Mapping[str, set[str]],
                   users: Sequence[str], a: str, b: str, k: int = 12, samples: int = 2000, seed: int = 0
                   ) -> tuple[float, float] | None:
    """95% bootstrap interval (shoppers resampled with replacement) of MAP@k of run `a` / run `b`."""
    if not users:
        return None
    ap = {name: np.array([average_precision_at_k(runs[name].get(u, []), targets[u], k) for u in users])
          for name in (a, b)}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(users), size=(samples, len(users)))
    num, den = ap[a][picks].sum(1), ap[b][picks].sum(1)
    ratios = num[den > 0] / den[den > 0]
    if not len(ratios):
        return None
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def feed(client: ApiClient, history: Sequence[Purchase], shift_s: float) -> tuple[int, int]:
    """POST the history as purchase events (times moved by shift_s); items missing from the index are skipped."""
    events = [{"user_id": shopper(p.user), "item_id": p.item, "event": "purchase",
               "ts": datetime.fromtimestamp(epoch(p.day) + shift_s + 43_200, timezone.utc).isoformat()}
              for p in history]  # noon of the day
    accepted = skipped = 0
    for start in range(0, len(events), BATCH):
        batch = events[start:start + BATCH]
        try:
            accepted += int(client.post("/api/feedback", json_body=batch)["accepted"])
        except ApiError as e:
            if e.status != 404:
                raise
            for event in batch:
                try:
                    accepted += int(client.post("/api/feedback", json_body=event)["accepted"])
                except ApiError as one:
                    if one.status != 404:
                        raise
                    skipped += 1
    return accepted, skipped


def recommend(client: ApiClient, user: str, k: int, sources: str | None = None) -> list[str]:
    params: dict[str, Any] = {"k": k}
    if sources:
        params["sources"] = sources
    body = client.get(f"/api/users/{shopper(user)}/recommendations", params)
    return [str(r["id"]) for r in body["results"]]


def run_recommend_report(cfg: Config, client: ApiClient, cutoff: str = "2020-05-01", end: str = END, k: int = 12,
                         limit: int = 0, keep_profiles: bool = False, transactions: Path | None = None
                         ) -> dict[str, Any]:
    """MAP@k and HR@k over each shopper's purchases in [cutoff, end), for the blend, each source alone and
    two baselines from the same data: the last 30 days' best-sellers, and buy-again-then-popular."""
    path = transactions or Path(cfg.catalogue.path).parent / "transactions.csv"
    if not path.is_file():
        return {"skipped": f"no transactions at {path}"}
    if not cutoff < end:
        raise BadInput(f"cutoff {cutoff} must be before end {end}")
    start = time.perf_counter()
    known = set(load_catalogue(cfg).rows)
    history, targets = split(load_purchases(path), cutoff, end, known)
    users = sorted(targets)
    if limit:
        users = users[:limit]
    if not history or not users:
        return {"skipped": f"no purchases before {cutoff} or none in [{cutoff}, {end})"}
    everyone = sorted({p.user for p in history} | set(users))
    forget(client, [shopper(u) for u in everyone])
    accepted, skipped = feed(client, history, time.time() - epoch(cutoff))
    log.info("recommend section: %d history events accepted, %d skipped", accepted, skipped)
    runs: dict[str, dict[str, list[str]]] = defaultdict(dict)
    try:
        for u in users:
            runs["blend"][u] = recommend(client, u, k)
            for source in SOURCES:
                runs[source][u] = recommend(client, u, k, source)
    finally:
        if not keep_profiles:
            forget(client, [shopper(u) for u in everyone])
    popular = popular_last_days(history, cutoff, POPULAR_DAYS, k)
    runs[f"popular_{POPULAR_DAYS}d"] = {u: popular for u in users}
    runs["buy_again_then_popular"] = buy_again_then_popular(history, users, popular, k)
    buyers = {p.user for p in history}
    warm = [u for u in users if u in buyers]
    cold = [u for u in users if u not in buyers]
    report: dict[str, Any] = {
        "cutoff": cutoff, "end": end, "k": k, "transactions_file": str(path),
        "history_events": accepted, "history_skipped": skipped,
        "shoppers": len(users), "warm_shoppers": len(warm), "cold_shoppers": len(cold),
        "target_purchases": sum(len(targets[u]) for u in users),
        "all": summarise(runs, targets, users, k),
        # each shopper's AP@k for the blend and the baseline (paired comparisons of two configs:
        # evaluation/experiments/ranker.py)
        "per_user": {"user": users, **{name: [average_precision_at_k(runs[name].get(u, []), targets[u], k)
                                              for u in users] for name in ("blend", "buy_again_then_popular")}},
        "warm": summarise(runs, targets, warm, k),
        "cold": summarise(runs, targets, cold, k),
        "weights": {s: getattr(cfg.recommend, s) for s in SOURCES},
    }
    base = report["all"]["buy_again_then_popular"][f"map@{k}"]
    blend = report["all"]["blend"][f"map@{k}"]
    report["blend_vs_buy_again_then_popular"] = blend / base if base > 0 else None
    # a few hundred shoppers with a handful of hits each: how far the ratio could move by chance alone
    report["blend_vs_buy_again_then_popular_ci95"] = ratio_interval(runs, targets, users, "blend",
                                                                    "buy_again_then_popular", k)
    report["target"] = {"blend map@12 >= 2x buy_again_then_popular": (blend >= 2 * base) if base > 0 else None}
    report["seconds"] = time.perf_counter() - start
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Recommendation evaluation on H&M through the API.")
    parser.add_argument("--config", default="configs/hm.toml")
    parser.add_argument("--cutoff", default="2020-05-01")
    parser.add_argument("--end", default=END)
    parser.add_argument("--url", help="a running service (default: the app in-process)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N test shoppers")
    parser.add_argument("--out", help="write the report as JSON here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    report = run_recommend_report(cfg, open_client(cfg, args.url), args.cutoff, args.end, limit=args.limit)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
