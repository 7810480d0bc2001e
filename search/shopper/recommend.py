"""Recommendations: a shopper's blend of vector neighbours, co-bought, buy-again and popular items; also-bought."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from search.query.learned import configured_ranker
from search.shopper.lookup import affinity_to
from search.shopper.personal import EVENTS, Event, affinity_weights, decay, event_weight, unit
from search.store.interface import DENSE_VECTORS, DenseQuery, Filters, Hit
from vitrina.config import PersonalConfig
from vitrina.errors import ConfigError, VitrinaError

if TYPE_CHECKING:
    from search.query.engine import SearchService
    from search.query.learned import Reranker

SOURCES = ("similar", "co_bought", "buy_again", "popular")
_POPULAR_PAGES = 20  # pages of the popularity list read to satisfy narrow filters
_FILL_VALUES = 20  # the largest categories whose typical items fill a short feed


def matches(payload: Mapping[str, Any], filters: Filters | None) -> bool:
    """Whether an item's payload passes the filters (exact match on any value, inclusive ranges)."""
    if not filters:
        return True
    for name, values in filters.equals.items():
        have = payload.get(name)
        have_all = have if isinstance(have, (list, tuple)) else [have]
        if not any(str(h) in values for h in have_all if h is not None):
            return False
    for name, (low, high) in filters.ranges.items():
        try:
            value = float(payload.get(name))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            return False
    return True


def blend(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The final score: sum over sources of weight * the source's score in [0, 1]."""
    return float(sum(weights.get(s, 0.0) * parts.get(s, 0.0) for s in SOURCES))


def buy_again_scores(history: Sequence[Event], events: Sequence[str], top_weight: float, now: float,
                     cfg: Any) -> dict[str, float]:
    """Items the shopper bought before: decayed event weight / one fresh purchase's, capped at 1."""
    raw: dict[str, float] = defaultdict(float)
    for e in history:
        if e.event in events:
            raw[e.item_id] += event_weight(e.event, cfg) * decay(now - e.ts, cfg)
    return {item: min(1.0, r / top_weight) for item, r in raw.items() if r > 0}


def recent_items(history: Sequence[Event], events: Sequence[str], limit: int) -> list[tuple[str, float]]:
    """The shopper's latest distinct items (by events of these types), newest first, with their last time."""
    last: dict[str, float] = {}
    for e in history:
        if e.event in events:
            last[e.item_id] = max(last.get(e.item_id, e.ts), e.ts)
    return sorted(last.items(), key=lambda t: (-t[1], t[0]))[:limit]


class Recommender:
    """Candidates from four sources, each scored in [0, 1], blended with the [recommend] weights."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.cfg = service.cfg
        self._typical_of: tuple[str, list[str]] | None = None  # the unfiltered typical items of a collection
        if self.cfg.recommend.similar_using not in DENSE_VECTORS:
            raise ConfigError(f"[recommend].similar_using must be one of {DENSE_VECTORS}, "
                              f"got {self.cfg.recommend.similar_using!r}")

    @property
    def clock(self) -> PersonalConfig:
        """The personal settings with the half-life that freshness uses here ([recommend].half_life_days)."""
        pc = self.cfg.personal
        days = self.cfg.recommend.half_life_days
        return dataclasses.replace(pc, half_life_days=days) if days > 0 else pc

    @property
    def weights(self) -> dict[str, float]:
        rc = self.cfg.recommend
        return {"similar": rc.similar, "co_bought": rc.co_bought, "buy_again": rc.buy_again, "popular": rc.popular}

    # ----- sources -----

    def _similar(self, vectors: Sequence[tuple[np.ndarray, str]], filters: Filters | None, skip: set[str],
                 limit: int) -> list[dict[str, float]]:
        """Nearest items to each (vector, named vector it is compared with), all in one engine call, leaving
        out `skip`: per vector, item -> cosine in [0, 1]. Ids and scores only: payloads are read later,
        for the few items shown."""
        queries, where = [], []
        for n, (vector, using) in enumerate(vectors):
            v = unit(vector)
            if v.any():
                queries.append(DenseQuery(v, using))
                where.append(n)
        out: list[dict[str, float]] = [{} for _ in vectors]
        if not queries or limit <= 0:
            return out
        base = filters or Filters()
        if skip:  # left out by the engine, so each query returns `limit` items that count
            base = Filters(base.equals, base.ranges, tuple(base.exclude_ids) + tuple(sorted(skip)))
        found = self.service.store.query_batch(self.service.alias, queries, base or None, limit=limit,
                                               with_payload=False)
        for n, hits in zip(where, found):
            out[n] = {h.id: max(0.0, min(1.0, float(h.score))) for h in hits if h.id not in skip}
        return out

    def _similar_to_user(self, user_id: str, history: Sequence[Event], filters: Filters | None, skip: set[str],
                         now: float, k: int) -> dict[str, float]:
        """Nearest items to the shopper's taste vector (fused space) and to each of their latest items
        ([recommend].similar_using space), max(similar_per_item, k) each, in one engine call; an item
        near several counts once, at its best: cosine ** similar_power * freshness of what it is near."""
        rc, pc = self.cfg.recommend, self.clock
        wanted: list[tuple[np.ndarray, str]] = []
        fresh: list[float] = []
        state = self.service.profiles.get(user_id)
        if state is not None:
            wanted.append((state.vector, "fused"))
            fresh.append(decay(now - state.updated_at, pc))
        latest = recent_items(history, EVENTS, rc.similar_items) if rc.similar_items > 0 else []
        if latest:
            using = rc.similar_using
            hits = {h.id: h for h in self.service.store.retrieve(self.service.alias, [i for i, _ in latest],
                                                                 with_vectors=[using])}
            for item, at in latest:
                if item in hits and using in hits[item].vectors:
                    wanted.append((hits[item].vectors[using], using))
                    fresh.append(decay(now - at, pc))
        out: dict[str, float] = {}
        for found, f in zip(self._similar(wanted, filters, skip, max(rc.similar_per_item, k)), fresh):
            for item, cos in found.items():
                score = cos ** rc.similar_power * f
                if score > out.get(item, -1.0):
                    out[item] = score
        return out

    def _with_affinity(self, user_id: str, near: dict[str, float]) -> tuple[dict[str, float], dict[str, Hit]]:
        """The `similar` scores leaned toward what the shopper usually buys: score * (1 + w * affinity) /
        (1 + w * the largest affinity among them), w = [recommend].similar_affinity and the affinity of personal
        search ([personal].affinity: shares of the shopper's purchases with the item's product code, department
        and so on), so they stay in [0, 1]. Unchanged when w = 0, without purchases or without [personal].affinity.
        Also returns the candidates' payloads it read (one read for them and the purchases)."""
        w = self.cfg.recommend.similar_affinity
        weights = affinity_weights(self.cfg.personal) if w > 0 and near else {}
        history = self.service.profiles.recent_purchases(user_id, self.cfg.personal.affinity_history) if weights else []
        if not history:
            return near, {}
        store, alias = self.service.store, self.service.alias
        read = {h.id: h for h in store.retrieve(alias, list(dict.fromkeys([*near, *history])))}
        hits = [read[i] for i in near if i in read]
        aff = affinity_to(store, alias, hits, history, weights, known=read)
        if aff is None or not len(aff):
            return near, {}
        top = 1.0 + w * max(float(aff.max()), 0.0)
        out = dict(near)
        out.update((h.id, near[h.id] * (1.0 + w * max(float(a), 0.0)) / top) for h, a in zip(hits, aff))
        return out, {h.id: h for h in hits}

    def _popular(self, filters: Filters | None, skip: set[str], limit: int, now: float
                 ) -> tuple[dict[str, float], float, dict[str, Hit]]:
        """The most popular items passing the filters: item -> popularity / the top item's, the top, and
        the payloads read to check the filters (none without filters)."""
        out: dict[str, float] = {}
        known: dict[str, Hit] = {}
        top = 0.0
        page: list[tuple[str, float]] = []
        pages = 0

        def flush() -> None:
            hits = {h.id: h for h in self.service.store.retrieve(self.service.alias, [i for i, _ in page])}
            for item, score in page:
                h = hits.get(item)
                if h is not None and len(out) < limit and matches(h.payload, filters):
                    out[item] = score / top if top > 0 else 0.0
                    known[item] = h

        batch = limit + len(skip) + 1
        for item, score in self.service.profiles.popular(now=now, batch=batch):
            top = top or score
            if item in skip or score <= 0:
                continue
            if not filters:  # existence in the index is checked with the payloads of the items shown
                out[item] = score / top if top > 0 else 0.0
                if len(out) >= limit:
                    break
                continue
            page.append((item, score))
            if len(page) >= 2 * limit:
                flush()
                page, pages = [], pages + 1
                if len(out) >= limit or pages >= _POPULAR_PAGES:
                    break
        if page and len(out) < limit:
            flush()
        return out, top, known

    def _typical(self, filters: Filters | None, limit: int) -> list[str]:
        """About `limit` of the catalogue's typical items, for a feed the shoppers' events cannot fill (a shop with
        no events yet, narrow filters): per category value, largest first, the items nearest its items' text
        centroid (the query reader's value index), taken a category at a time in turn. [] without a value index."""
        try:
            values = self.service.reader().values
        except VitrinaError:
            return []
        field = self.cfg.catalogue.category
        fv = values.fields.get(field) if field else None
        if fv is None or not len(fv.values):
            return []
        cached = self._typical_of
        if not filters and cached is not None and cached[0] == values.collection:
            return cached[1]
        allowed = set(filters.equals.get(field, ())) if filters else set()
        order = [i for i in np.argsort(-fv.counts, kind="stable") if not allowed or fv.values[i] in allowed]
        order = order[:_FILL_VALUES]
        each = math.ceil(limit / max(1, len(order)))
        base = filters or Filters()
        lists = []
        for i in order:
            only = dataclasses.replace(base, equals={**base.equals, field: (fv.values[i],)})
            hits = self.service.store.query(self.service.alias, DenseQuery(fv.centroids[i], "text"), only,
                                            limit=each)
            lists.append([h.id for h in hits])
        out = [ids[n] for n in range(each) for ids in lists if n < len(ids)]
        if not filters:
            self._typical_of = (values.collection, out)
        return out

    def _shown(self, ranked: Sequence[str], filters: Filters | None, k: int, known: Mapping[str, Hit]
               ) -> list[Hit]:
        """The first k of `ranked` that exist in the index and pass the filters; payloads are read a page
        at a time (k + a few, doubling), so an unfiltered list costs one small read."""
        out: list[Hit] = []
        start, size = 0, k + 4
        while len(out) < k and start < len(ranked):
            chunk = ranked[start:start + size]
            wanted = [i for i in chunk if i not in known]
            found = {h.id: h for h in self.service.store.retrieve(self.service.alias, wanted)} if wanted else {}
            for i in chunk:
                h = known.get(i) or found.get(i)
                if h is not None and matches(h.payload, filters):
                    out.append(h)
                    if len(out) >= k:
                        break
            start, size = start + size, size * 2
        return out

    # ----- the two lists -----

    def for_user(self, user_id: str, k: int, filters: Filters | None = None, exclude_purchased: bool | None = None,
                 now: float | None = None, sources: Sequence[str] | None = None, ranker: Reranker | None = None
                 ) -> dict[str, Any]:
        """Top-k for a shopper; an unknown shopper gets the popular list (narrowed by the filters).

        Freshness is measured against `now`, by default the newest event in the log (never later than
        the wall clock), so a shopper idle for long leans on popularity while a replayed log still works.
        `sources` keeps only some of SOURCES (each alone is how the evaluation compares them). A learned ranker
        ([ranker].recommend_model, or `ranker`) re-orders the blend's top-N of the full blend (not of one source).
        """
        use = tuple(s for s in SOURCES if sources is None or s in sources)
        weights = {s: self.weights[s] for s in use}
        if sources is not None and not any(weights.values()):
            weights = {s: 1.0 for s in use}  # a source switched off in the config can still be asked alone
        t0 = time.perf_counter()
        rc, pc = self.cfg.recommend, self.clock
        profiles = self.service.profiles
        if now is None:  # the shop's clock: a replayed or idle log is scored as of its newest event
            now = profiles.clock()
        exclude_purchased = rc.exclude_purchased if exclude_purchased is None else exclude_purchased
        history = list(profiles.events(user_id=user_id))
        seen = {e.item_id for e in history}
        banned = {e.item_id for e in history if e.event == "purchase"} if exclude_purchased else set()
        top_weight = max(event_weight(e, pc) for e in pc.cooc_events) or 1.0
        parts: dict[str, dict[str, float]] = defaultdict(dict)

        for item, score in buy_again_scores(history, pc.cooc_events, top_weight, now, pc).items():
            if item not in banned and "buy_again" in use:
                parts[item]["buy_again"] = score
        co: dict[str, float] = defaultdict(float)
        recent = recent_items(history, pc.cooc_events, rc.recent_items) if "co_bought" in use else []
        lists = profiles.neighbours_many([i for i, _ in recent], rc.pool, rc.shrink) if recent else {}
        for item, at in recent:
            fresh = decay(now - at, pc)
            for other, score, _ in lists.get(item, []):
                if other not in seen:
                    co[other] += fresh * score
        for item, score in sorted(co.items(), key=lambda t: -t[1])[:rc.pool]:
            parts[item]["co_bought"] = min(1.0, score)
        known: dict[str, Hit] = {}  # payloads already read, not read again for the items shown
        if weights.get("similar", 0.0) > 0:
            near = self._similar_to_user(user_id, history, filters, seen | banned, now, k)
            near, known = self._with_affinity(user_id, near)
            for item, score in near.items():
                parts[item]["similar"] = score
        popular: dict[str, float] = {}
        if "popular" in use:
            popular, top, read = self._popular(filters, seen, max(rc.pool, k), now)  # bought: via buy-again
            known.update(read)
            for item, score in popular.items():
                parts[item]["popular"] = score
            prior = profiles.popularity([i for i in parts if "popular" not in parts[i]], now=now)
            for item, pop in prior.items():  # the popularity prior applies to every candidate
                if pop > 0 and top > 0:
                    parts[item]["popular"] = min(1.0, pop / top)
        final = {i: blend(p, weights) for i, p in parts.items()}
        ranked = sorted(parts, key=lambda i: (-final[i], -parts[i].get("popular", 0.0), i))
        ranker = ranker if ranker is not None else configured_ranker(self.service, "recommend") \
            if sources is None else None
        scored: dict[str, Any] = {}
        if ranker is not None:
            ranked, scored = ranker.rerank_items(self.service, user_id, ranked, parts, final, now)
        shown = self._shown(ranked, filters, k, known)
        fill: list[Hit] = []
        if len(shown) < k and sources is None and rc.fill:  # too few from the shoppers' events: typical items
            taken = {h.id for h in shown} | seen  # seen holds the shopper's purchases too
            fill = self._shown([i for i in self._typical(filters, max(rc.pool, k)) if i not in taken], filters,
                               k - len(shown), {})
        learned, rows = ranker.explain_items(scored, [h.id for h in shown]) if scored and ranker else ({}, None)
        results = []
        for hit in shown:
            p = parts[hit.id]
            explain: dict[str, Any] = {"sources": sorted(s for s in p if s != "popular" or hit.id in popular)}
            explain.update({s: p.get(s, 0.0) for s in SOURCES})
            explain["final"] = final[hit.id]
            if hit.id in learned:
                explain["ranker"] = learned[hit.id]
            results.append(self.service.result(hit, explain))
        for hit in fill:
            explain = {"sources": ["typical"], **{s: 0.0 for s in SOURCES}, "final": 0.0}
            results.append(self.service.result(hit, explain))
        out = {"results": results, "total": len(results), "took_ms": round((time.perf_counter() - t0) * 1e3, 2)}
        if rows is not None:
            out["_features"] = rows
        return out

    def also_bought(self, item_id: str, k: int, filters: Filters | None = None) -> dict[str, Any]:
        """Items co-bought with this one (normalised, see signals.neighbours); vector neighbours fill up."""
        t0 = time.perf_counter()
        rc = self.cfg.recommend
        item = self.service.get_hit(item_id, with_vectors=True)  # NotFound for an unknown item
        parts: dict[str, float] = {}
        for other, score, _ in self.service.profiles.neighbours(item_id, max(rc.pool, 4 * k), rc.shrink):
            if other != item_id:
                parts[other] = min(1.0, score)
        ranked = sorted(parts, key=lambda i: (-parts[i], i))
        results = [self.service.result(h, {"sources": ["co_bought"], "co_bought": parts[h.id],
                                           "final": parts[h.id]}) for h in self._shown(ranked, filters, k, {})]
        vec = item.vectors.get("fused")
        if len(results) < k and rc.similar_fallback and vec is not None:
            floor = min((r["explain"]["co_bought"] for r in results), default=1.0)
            skip = {r["id"] for r in results} | {item_id}
            near = self._similar([(np.asarray(vec, np.float32), "fused")], filters, skip, k - len(results))[0]
            for hit in self._shown(list(near), None, len(near), {}):  # the query applied the filters
                cos = near[hit.id]
                results.append(self.service.result(hit, {"sources": ["similar"], "similar": cos,
                                                         "final": floor * cos}))
        return {"results": results, "total": len(results), "took_ms": round((time.perf_counter() - t0) * 1e3, 2)}
