"""Training groups for a learned ranker: purchases replayed against what the engine showed, or the click log."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from evaluation.client import forget
from evaluation.data import Catalogue, Purchase
from evaluation.personal import eval_user, epoch, feed_history
from search.online.impressions import FEEDBACK, IMPRESSION, features_of

log = logging.getLogger(__name__)

GRADES = {"click": 1.0, "cart": 2.0, "purchase": 3.0}  # label of a shown item by the deepest thing done with it


@dataclass
class Groups:
    """Ranking groups (one per search): feature rows, graded labels, the shown position of each row (when the
    rows come from a log), and where each group came from."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    position: list[np.ndarray] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=lambda: defaultdict(int))

    def add(self, x: np.ndarray, y: np.ndarray, position: np.ndarray, source: str) -> None:
        self.x.append(np.asarray(x, dtype=np.float64))
        self.y.append(np.asarray(y, dtype=np.float64))
        self.position.append(np.asarray(position, dtype=np.int64))
        self.source.append(source)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, position, group sizes) stacked in group order."""
        sizes = np.array([len(y) for y in self.y], dtype=np.int64)
        if not len(sizes):
            return np.zeros((0, 0)), np.zeros(0), np.zeros(0, dtype=np.int64), sizes
        return np.concatenate(self.x), np.concatenate(self.y), np.concatenate(self.position), sizes


def replay_purchases(client: Any, catalogue: Catalogue, purchases: Sequence[Purchase],
                     windows: Sequence[tuple[str, str]], query_field: str, candidates: int,
                     groups: Groups | None = None, recommend: Groups | None = None) -> Groups:
    """Per window (cutoff, end): the shoppers' profiles from purchases before the cutoff (through the API, as
    the evaluation does), then for each later purchase in the window a search for the bought article's
    `query_field` (as the shopper); the hand blend's top `candidates` with their features form one group, the
    bought article(s) labelled 1, every other candidate the engine would have shown labelled 0 (the negatives).
    A search whose bought article is not among the candidates teaches nothing about their order: left out
    (counted). With `recommend`, each shopper who bought in the window also gets one group there: the
    recommendation blend's top `candidates` for them at the cutoff, what they bought in the window labelled 1.
    `client` is the in-process client: the capture needs the service itself."""
    from search.query.learned import Capture
    from search.query.request import parse_search

    out = groups or Groups()
    service = client.app.extensions["vitrina"]
    for cutoff, end in windows:
        history = [p for p in purchases if p.day < cutoff and p.item in catalogue.rows]
        wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
        for p in purchases:
            if cutoff <= p.day < end and p.item in catalogue.rows and catalogue.rows[p.item].get(query_field):
                wanted[(p.user, catalogue.rows[p.item][query_field])].add(p.item)
        users = sorted({p.user for p in history} | {u for u, _ in wanted})
        forget(client, [eval_user(u) for u in users])
        start = time.perf_counter()
        try:
            feed_history(client, history, time.time() - epoch(cutoff))
            if service.cfg.segments.k > 0:
                from search.shopper.segments import rebuild

                rebuild(service.profiles, service.cfg)
            warm = {p.user for p in history}
            capture = Capture(candidates)
            for (user, q), bought in sorted(wanted.items()):
                req = parse_search({"q": [q], "k": ["10"], "user_id": [eval_user(user)]}, service.cfg)
                service.search(req, ranker=capture)
                _label(out, capture, bought, f"{cutoff}:{end}", "warm" if user in warm else "cold", "searches")
            if recommend is not None:
                _replay_recommendations(client, purchases, cutoff, end, warm, candidates, catalogue, recommend)
        finally:
            forget(client, [eval_user(u) for u in users])
        log.info("replay %s..%s: %d searches in %.0f s", cutoff, end, len(wanted), time.perf_counter() - start)
    return out


def _replay_recommendations(client: Any, purchases: Sequence[Purchase], cutoff: str, end: str, warm: set[str],
                            candidates: int, catalogue: Catalogue, groups: Groups) -> None:
    """One group per shopper who bought in [cutoff, end): their recommendation candidates, the bought ones = 1."""
    from evaluation.recommend import split
    from search.query.learned import Capture
    from search.shopper.recommend import Recommender

    recommender = Recommender(client.app.extensions["vitrina"])
    _, targets = split(purchases, cutoff, end, set(catalogue.rows))
    capture = Capture(candidates, "recommend")
    for user, bought in sorted(targets.items()):
        recommender.for_user(eval_user(user), 12, ranker=capture)
        _label(groups, capture, bought, f"{cutoff}:{end}", "warm" if user in warm else "cold", "shoppers")


def _label(groups: Groups, capture: Any, bought: set[str], window: str, key: str, counted: str) -> None:
    """The group the capture just took (if it took one: a search with no candidates takes none), the bought ids
    labelled 1; left out (and counted as missed) when none of them is among the candidates."""
    if not capture.groups:
        return
    ids, x = capture.groups.pop()
    y = np.array([1.0 if i in bought else 0.0 for i in ids])
    groups.stats[f"{counted}_{key}"] += 1
    if not y.any():
        groups.stats[f"missed_{key}"] += 1
        return
    groups.add(x, y, np.arange(len(ids)), f"{window}:{key}")


def from_log(records: Iterable[Mapping[str, Any]], since: float | None = None, until: float | None = None,
             surface: str = "search", groups: Groups | None = None) -> Groups:
    """Groups from the impression log: every logged response of `surface` with feature rows (in [since, until))
    that got at least one click, cart or purchase naming it; each shown item labelled by the deepest thing done
    with it (GRADES), its shown position kept (for unbiased lambdarank)."""
    out = groups or Groups()
    shown: dict[str, Mapping[str, Any]] = {}
    done: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        ts = float(r.get("ts", 0.0))
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        if r.get("kind") == IMPRESSION and r.get("surface") == surface and r.get("features"):
            shown[r["request_id"]] = r
        elif r.get("kind") == FEEDBACK and r.get("event") in GRADES and r.get("request_id"):
            s = shown.get(r["request_id"])
            if s is None or s.get("user_id") != r.get("user_id"):
                continue
            items = s["items"]
            pos = r.get("position")
            i = pos - int(s.get("offset") or 0) if isinstance(pos, int) else -1
            if not 0 <= i < len(items) or items[i] != r.get("item_id"):
                i = items.index(r["item_id"]) if r.get("item_id") in items else -1
            if i >= 0:
                done[r["request_id"]][i] = max(done[r["request_id"]].get(i, 0.0), GRADES[r["event"]])
    for rid, labels in done.items():
        s = shown[rid]
        y = np.zeros(len(s["items"]))
        for i, grade in labels.items():
            y[i] = grade
        out.add(features_of(s), y, int(s.get("offset") or 0) + np.arange(len(y)), "log")
    out.stats["log_responses"] += len(shown)
    out.stats["log_responses_with_feedback"] += len(done)
    return out
