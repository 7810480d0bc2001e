"""Personalisation section: profiles from past purchases via POST /api/feedback, then HR@10 and MRR lift."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from evaluation.client import ApiClient, ApiError, forget
from evaluation.data import Catalogue, Purchase
from evaluation.metrics import hit_rate_at_k, reciprocal_rank

log = logging.getLogger(__name__)

USER_PREFIX = "eval."  # evaluation shoppers live under their own ids and are forgotten afterwards
BATCH = 500
NAIVE_WEIGHTS = {"article": 0.5, "product_code": 0.3, "colour_group_name": 0.2, "department_name": 0.2}


def epoch(day: str) -> float:
    """YYYY-MM-DD (UTC midnight) as epoch seconds."""
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


def eval_user(customer: str) -> str:
    return USER_PREFIX + customer


def feed_history(client: ApiClient, history: Sequence[Purchase], shift_s: float) -> tuple[int, int]:
    """POST every past purchase as a `purchase` event (ts moved by shift_s); returns (accepted, skipped)."""
    events = [{"user_id": eval_user(p.user), "item_id": p.item, "event": "purchase",
               "ts": datetime.fromtimestamp(epoch(p.day) + shift_s, timezone.utc).isoformat()} for p in history]
    accepted = skipped = 0
    for start in range(0, len(events), BATCH):
        batch = events[start:start + BATCH]
        try:
            accepted += int(client.post("/api/feedback", json=batch).get("accepted", 0))
        except ApiError as e:
            if e.status != 404:
                raise
            for event in batch:  # an item missing from the index: send one by one, skip the unknown
                try:
                    accepted += int(client.post("/api/feedback", json=event).get("accepted", 0))
                except ApiError as one:
                    if one.status != 404:
                        raise
                    skipped += 1
    return accepted, skipped


def naive_rerank(ranked: Sequence[str], past: Sequence[str], catalogue: Catalogue,
                 weights: Mapping[str, float] = NAIVE_WEIGHTS) -> list[str]:
    """Reference rerank without vitrina's user vector: rank score 1 - rank/N, plus weights["article"] for
    an article bought before, plus weights[column] x the share of past purchases with the item's value
    of that catalogue column (product code, colour, department)."""
    if not past:
        return list(ranked)
    bought = set(past)
    shares: dict[str, Counter[str]] = {f: Counter(catalogue.rows.get(i, {}).get(f, "") for i in past)
                                       for f in weights if f != "article"}
    n = max(len(ranked), 1)

    def score(pos: int, item: str) -> float:
        row = catalogue.rows.get(item, {})
        s = 1.0 - pos / n + weights.get("article", 0.0) * (item in bought)
        for f, counts in shares.items():
            value = row.get(f, "")
            if value:
                s += weights[f] * counts[value] / len(past)
        return s

    order = sorted(range(len(ranked)), key=lambda pos: -score(pos, ranked[pos]))
    return [ranked[pos] for pos in order]


def _summary(rankings: Mapping[str, list[list[str]]], targets: Sequence[str], k: int) -> dict[str, Any]:
    out: dict[str, Any] = {"purchases": len(targets)}
    for name, runs in rankings.items():
        hr = [hit_rate_at_k(r, {t}, k) for r, t in zip(runs, targets)]
        rr = [reciprocal_rank(r, {t}) for r, t in zip(runs, targets)]
        deep = [1.0 if t in r else 0.0 for r, t in zip(runs, targets)]  # the ceiling any rerank of these has
        out[name] = {f"hr@{k}": sum(hr) / len(hr) if hr else 0.0, "mrr": sum(rr) / len(rr) if rr else 0.0,
                     "hr@depth": sum(deep) / len(deep) if deep else 0.0}
    base = out.get("base", {}).get(f"hr@{k}", 0.0)
    for name in rankings:
        if name != "base":
            value = out[name][f"hr@{k}"]
            out[f"lift_{name}"] = (value - base) / base if base > 0 else None
            mb = out["base"]["mrr"]
            out[f"lift_{name}_mrr"] = (out[name]["mrr"] - mb) / mb if mb > 0 else None
    return out


def run_personal_report(client: ApiClient, catalogue: Catalogue, purchases: Sequence[Purchase], cutoff: str,
                        end: str, query_field: str, mode: str = "hybrid", k: int = 10, depth: int = 100,
                        limit: int = 0, keep_profiles: bool = False) -> dict[str, Any]:
    """HR@k and MRR of each later purchase for a query made from its `query_field`, with and without
    the shopper's user_id; warm (history before the cutoff) and cold-start shoppers reported apart.

    Event times are moved so that the cutoff is now: the service decays evidence to the time of the
    search, and a shopper searching right after their last purchase is what the split simulates.
    """
    history = [p for p in purchases if p.day < cutoff and p.item in catalogue.rows]
    seen: set[tuple[str, str]] = set()
    tests = []
    for p in purchases:
        if cutoff <= p.day < end and p.item in catalogue.rows and (p.user, p.item) not in seen:
            seen.add((p.user, p.item))
            if catalogue.rows[p.item].get(query_field):
                tests.append(p)
    if limit:
        tests = tests[:limit]
    past: dict[str, list[str]] = defaultdict(list)
    for p in history:
        past[p.user].append(p.item)
    ids = [eval_user(u) for u in sorted({p.user for p in history} | {p.user for p in tests})]
    start = time.perf_counter()
    forget(client, ids)
    accepted, skipped = feed_history(client, history, time.time() - epoch(cutoff))
    log.info("personal section: %d history events accepted, %d skipped", accepted, skipped)
    base_cache: dict[str, list[str]] = {}
    user_cache: dict[tuple[str, str], list[str]] = {}
    runs: dict[str, dict[str, list[list[str]]]] = {"warm": defaultdict(list), "cold": defaultdict(list)}
    targets: dict[str, list[str]] = {"warm": [], "cold": []}
    buyers: dict[str, list[str]] = {"warm": [], "cold": []}
    try:
        for p in tests:
            q = catalogue.rows[p.item][query_field]
            if q not in base_cache:
                body = client.get("/api/search", {"q": q, "k": depth, "mode": mode})
                base_cache[q] = [str(r["id"]) for r in body.get("results", [])]
            if (p.user, q) not in user_cache:
                body = client.get("/api/search", {"q": q, "k": depth, "mode": mode, "user_id": eval_user(p.user)})
                user_cache[(p.user, q)] = [str(r["id"]) for r in body.get("results", [])]
            group = "warm" if p.user in past else "cold"
            targets[group].append(p.item)
            buyers[group].append(p.user)
            runs[group]["base"].append(base_cache[q])
            runs[group]["personal"].append(user_cache[(p.user, q)])
            if group == "warm":
                runs[group]["naive"].append(naive_rerank(base_cache[q], past[p.user], catalogue))
    finally:
        if not keep_profiles:
            forget(client, ids)
    report: dict[str, Any] = {
        "cutoff": cutoff, "end": end, "mode": mode, "query_field": query_field, "k": k, "depth": depth,
        "history_events": accepted, "history_skipped": skipped, "test_purchases": len(tests),
        "shoppers": {"warm": len({p.user for p in tests if p.user in past}),
                     "cold": len({p.user for p in tests if p.user not in past})},
        "seconds": time.perf_counter() - start,
    }
    for group in ("warm", "cold"):
        report[group] = _summary(runs[group], targets[group], k)
        # each purchase's shopper and the bought article's rank (1-based, 0 = not in the list) per run: for paired
        # comparisons of two configs and intervals clustered by shopper (evaluation/experiments/ranker.py)
        report[group]["per_purchase"] = {"user": buyers[group], **{
            name: [r.index(t) + 1 if t in r else 0 for r, t in zip(ranking, targets[group])]
            for name, ranking in runs[group].items() if name in ("base", "personal")}}
    all_runs = {name: runs["warm"][name] + runs["cold"][name] for name in ("base", "personal")}
    report["all"] = _summary(all_runs, targets["warm"] + targets["cold"], k)
    return report
