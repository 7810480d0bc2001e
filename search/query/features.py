"""Ranker features of search candidates: the parts the engine computed for each, and the few it reads for them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from search.store.interface import DenseQuery, Filters, Hit, Store

if TYPE_CHECKING:
    from search.query.engine import SearchService
    from search.shopper.personal import UserState

# What a learned ranker sees of one candidate of one search (see `search_matrix` for each definition).
SEARCH_FEATURES = (
    "keyword", "keyword_rr", "vector", "vector_rr", "text_sim", "image_sim", "attributes", "relevance",
    "personal_rr", "user_cosine", "affinity", "evidence", "popularity", "item_age", "bought_before", "price_rel",
    "segment_cosine", "blend", "blend_rr",
)
# Features read straight from a candidate's explain (the raw parts SearchService._rank adds for a ranker).
_FROM_EXPLAIN = {"keyword": "keyword", "attributes": "attributes", "relevance": "relevance",
                 "user_cosine": "user_cosine", "affinity": "shared", "popularity": "item_popularity",
                 "bought_before": "bought", "blend": "final"}
NEVER_DAYS = 3650.0  # the age of an item nobody has interacted with yet


def _rr(rank: Any) -> float:
    """1 / rank (1-based), 0 when the candidate was not in that list."""
    return 1.0 / float(rank) if rank else 0.0


def similarities(store: Store, alias: str, query: np.ndarray | None, ids: Sequence[str], using: str,
                 known: Mapping[str, float] | None = None) -> np.ndarray:
    """Cosine of each candidate's `using` vector to the query vector, scored by the store over just these ids
    (those in `known` are not asked again); 0 where an item has no such vector or there is no query."""
    return similarities_of(store, alias, query, ids, (using,), {using: known or {}})[0]


def similarities_of(store: Store, alias: str, query: np.ndarray | None, ids: Sequence[str], usings: Sequence[str],
                    known: Mapping[str, Mapping[str, float]] | None = None) -> list[np.ndarray]:
    """`similarities` for several named vectors at once: one engine call (a batch of one query per vector that
    has candidates left to score) instead of one call each."""
    scores = [dict((known or {}).get(u) or {}) for u in usings]
    q = None if query is None else np.asarray(query, dtype=np.float32)
    norm = float(np.linalg.norm(q)) if q is not None else 0.0
    asks = [j for j, score in enumerate(scores) if any(i not in score for i in ids)] if ids and norm > 0 else []
    if asks:
        assert q is not None
        batch = store.query_batch(alias, [DenseQuery(q / norm, usings[j]) for j in asks], Filters(only_ids=tuple(ids)),
                                  limit=len(ids), with_payload=False)
        for j, hits in zip(asks, batch):
            scores[j].update((h.id, float(h.score)) for h in hits if h.id not in scores[j])
    return [np.array([score.get(i, 0.0) for i in ids], dtype=np.float64) for score in scores]


def _prices(hits: Sequence[Hit]) -> np.ndarray:
    """Each candidate's price relative to the median price of the candidates (1 where unknown)."""
    raw = []
    for h in hits:
        try:
            value = float(h.payload.get("price"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        raw.append(value if math.isfinite(value) and value > 0 else math.nan)
    prices = np.array(raw, dtype=np.float64)
    known = prices[np.isfinite(prices)]
    if not known.size:
        return np.ones(len(hits))
    return np.where(np.isfinite(prices), prices / float(np.median(known)), 1.0)


def search_matrix(service: SearchService, hits: Sequence[Hit], explain: Sequence[Mapping[str, Any]],
                  query: np.ndarray | None, user: UserState | None, now: float,
                  segment: np.ndarray | None = None) -> np.ndarray:
    """The (candidates x SEARCH_FEATURES) matrix, in the candidates' order:

    keyword, keyword_rr: BM25 score and 1 / its rank in the keyword list (0 outside it); vector, vector_rr: the
    fused cosine to the query and 1 / its dense rank; text_sim, image_sim: cosine of the query vector to the
    item's text and image vectors; attributes: share of named attribute values the item has; relevance: the
    engine's fused relevance; personal_rr: 1 / rank in the shopper's own list; user_cosine, affinity: the
    shopper's raw cosine and shared-values affinity; evidence: log(1 + the shopper's decayed evidence);
    popularity: log(1 + decayed popularity); item_age: log(1 + days since anyone's last event on it);
    bought_before: 0/1; price_rel: price / the candidates' median price; segment_cosine: cosine to the
    shopper's interest group; blend, blend_rr: the hand-tuned blend's score and 1 / its rank."""
    from search.shopper.personal import evidence_at

    ids = [h.id for h in hits]
    n = len(ids)
    store, alias = service.store, service.alias
    known = {h.id: e["vector"] for h, e in zip(hits, explain) if e.get("vector") is not None}
    vector, text, image = similarities_of(store, alias, query, ids, ("fused", "text", "image"), {"fused": known})
    seen = service.profiles.last_seen(ids)
    age = np.array([math.log1p(max(0.0, now - seen[i]) / 86_400.0) if i in seen else math.log1p(NEVER_DAYS)
                    for i in ids])
    evidence = math.log1p(evidence_at(user, now, service.cfg.personal)) if user is not None else 0.0
    cols = {f: np.array([float(e.get(key) or 0.0) for e in explain], dtype=np.float64)
            for f, key in _FROM_EXPLAIN.items()}
    order = np.argsort(-cols["blend"], kind="stable")
    blend_rr = np.zeros(n)
    blend_rr[order] = 1.0 / (np.arange(n) + 1.0)
    cols.update(
        keyword_rr=np.array([_rr(e.get("keyword_rank")) for e in explain]),
        vector=vector, vector_rr=np.array([_rr(e.get("vector_rank") or e.get("dense_rank")) for e in explain]),
        text_sim=text, image_sim=image, personal_rr=np.array([_rr(e.get("personal_rank")) for e in explain]),
        evidence=np.full(n, evidence), item_age=age, price_rel=_prices(hits),
        segment_cosine=segment if segment is not None else np.zeros(n), blend_rr=blend_rr)
    cols["popularity"] = np.log1p(np.clip(cols["popularity"], 0.0, None))
    return np.stack([cols[f] for f in SEARCH_FEATURES], axis=1) if n else np.zeros((0, len(SEARCH_FEATURES)))


# What a learned ranker sees of one recommendation candidate (see `recommend_matrix`).
RECOMMEND_FEATURES = (
    "similar", "co_bought", "buy_again", "popular", "sources", "blend", "blend_rr", "popularity", "item_age",
    "user_cosine", "evidence", "segment_cosine",
)


def recommend_matrix(service: SearchService, user_id: str, ids: Sequence[str],
                     parts: Mapping[str, Mapping[str, float]], final: Mapping[str, float], now: float
                     ) -> np.ndarray:
    """The (candidates x RECOMMEND_FEATURES) matrix for a shopper's recommendation candidates, in the given
    (blend) order: each source's score in [0, 1] and how many sources nominated it; the blend's score and
    1 / its rank; log(1 + decayed popularity); log(1 + days since anyone's last event on it); the shopper's raw
    cosine to it, log(1 + their evidence), and its cosine to the shopper's interest group."""
    from search.shopper.personal import evidence_at
    from search.shopper.segments import borrow, segment_cosines
    from search.shopper.lookup import user_cosines

    n = len(ids)
    if not n:
        return np.zeros((0, len(RECOMMEND_FEATURES)))
    profiles = service.profiles
    user = borrow(service, profiles.get(user_id))
    cols: dict[str, np.ndarray] = {s: np.array([float(parts[i].get(s, 0.0)) for i in ids])
                                   for s in ("similar", "co_bought", "buy_again", "popular")}
    cols["sources"] = np.array([float(len(parts[i])) for i in ids])
    cols["blend"] = np.array([float(final[i]) for i in ids])
    cols["blend_rr"] = 1.0 / (np.arange(n) + 1.0)
    pop = profiles.popularity(list(ids), now=now)
    cols["popularity"] = np.log1p(np.array([max(pop.get(i, 0.0), 0.0) for i in ids]))
    seen = profiles.last_seen(ids)
    cols["item_age"] = np.array([math.log1p(max(0.0, now - seen[i]) / 86_400.0) if i in seen
                                 else math.log1p(NEVER_DAYS) for i in ids])
    cos = user_cosines(service.store, service.alias, user, ids) if user is not None else None
    cols["user_cosine"] = cos if cos is not None else np.zeros(n)
    cols["evidence"] = np.full(n, math.log1p(evidence_at(user, now, service.cfg.personal)) if user else 0.0)
    seg = segment_cosines(service, user, ids)
    cols["segment_cosine"] = seg if seg is not None else np.zeros(n)
    return np.stack([cols[f] for f in RECOMMEND_FEATURES], axis=1)
