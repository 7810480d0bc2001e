"""The search service the web layer calls: lazy shared models, the five search modes, explain, feedback, profiles."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from search.query.fusion_weights import FusionWeights
from search.query.hybrid import USER_COS, hybrid_rows
from search.query.learned import Reranker, configured_ranker
from search.query.query_parse import with_price
from search.query.ranking import cosines, facet_counts
from search.query.request import FeedbackEvent, SearchRequest
from search.query.results import api_result, local_image
from search.query.understand import AttributeMatcher, match_share, photo_boost
from search.shopper.lookup import affinity_to, personal_list, record_events, user_cosines
from search.shopper.segments import borrow
from search.store.factory import open_store
from search.store.interface import DenseQuery, Filters, Hit, KeywordQuery, Store
from vitrina.config import Config
from vitrina.errors import BadInput, ModelUnavailable, NotFound, VitrinaError

if TYPE_CHECKING:
    from search.shopper.personal import UserState
    from search.shopper.profiles import ProfileStore
    from search.query.reading import QueryReader, Reading

log = logging.getLogger(__name__)

_USER_COS = USER_COS  # explain key carrying a known user cosine from _retrieve to _rank (popped there)


class SearchService:
    """Everything the API does, web-free: search, items, similar, feedback, profiles, health.

    Models load on first use (one shared instance, guarded by a lock), so creating the service and the
    app is cheap and never imports torch.
    """

    def __init__(self, cfg: Config, store: Store | None = None) -> None:
        self.cfg = cfg
        self.alias = cfg.store.alias
        self._store = store
        self._text: Any = None
        self._image: Any = None
        self._profiles: ProfileStore | None = None
        self._locks = {name: threading.Lock() for name in ("store", "text", "image", "profiles", "matcher", "cache",
                                                           "reader")}
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._matcher: tuple[float, str | None, AttributeMatcher] | None = None
        self._reader: tuple[str | None, QueryReader] | None = None
        self._count_cache: tuple[float, int] = (0.0, -1)
        self._counted: str | None = None  # the collection /health last counted
        self._root = self  # owner of the lazily built resources (a view made by with_config shares its root's)

    def with_config(self, cfg: Config) -> SearchService:
        """A view of this service that ranks with another config (an experiment's variant: search, personal,
        recommend, ranker settings) and shares its store, models, profiles and caches."""
        view = copy.copy(self)
        view.cfg = cfg
        return view

    # ---- lazily built resources -------------------------------------------------------------------------
    def _lazy(self, name: str, build: Callable[[], Any]) -> Any:
        """The resource kept in `self._<name>`, built by `build` on first use under its own lock (double-checked,
        so concurrent first requests build it once)."""
        attr, root = "_" + name, self._root
        value = getattr(root, attr)
        if value is None:
            with self._locks[name]:
                value = getattr(root, attr)
                if value is None:
                    value = build()
                    setattr(root, attr, value)
        return value

    @property
    def store(self) -> Store:
        return self._lazy("store", lambda: open_store(self.cfg))

    @property
    def model_cfg(self) -> Config:
        """The config models are built with: [search].torch_threads intra-op threads when set, the text
        encoder at [search].query_precision and the image tower on [search].photo_runtime."""
        from encoders import query_side

        return query_side(self.cfg)

    def text_encoder(self) -> Any:
        from encoders import create_text_encoder  # encoders imports torch only when a model is built

        return self._lazy("text", lambda: create_text_encoder(self.model_cfg))

    def image_encoder(self) -> Any:
        """The trained image tower as uploaded photos run it ([search].photo_runtime); ModelUnavailable (503) while
        there is none (checked again each call)."""
        from encoders import create_photo_encoder

        return self._lazy("image", lambda: create_photo_encoder(self.cfg))

    @property
    def profiles(self) -> ProfileStore:
        from search.shopper.profiles import open_profiles

        return self._lazy("profiles", lambda: open_profiles(self.cfg))

    def warm(self) -> None:
        """Load what a first search needs now (text model, store, the items' payloads, query reader), e.g. before
        serving."""
        self.text_encoder()
        if self.index_size(fresh=True) > 0:
            held = self.store.preload(self.alias)
            log.info("%d item payloads read into memory", held)
            if self.cfg.understand.enabled:
                self.reader()

    # ---- query vectors ----------------------------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        """The query's text embedding, from the LRU cache when the same text was asked recently."""
        size = self.cfg.search.query_cache
        with self._locks["cache"]:
            hit = self._query_cache.get(text)
            if hit is not None:
                self._query_cache.move_to_end(text)
                return hit
        vec = np.asarray(self.text_encoder().encode([text])[0], dtype=np.float32)
        vec.setflags(write=False)
        if size > 0:
            with self._locks["cache"]:
                self._query_cache[text] = vec
                while len(self._query_cache) > size:
                    self._query_cache.popitem(last=False)
        return vec

    def photo_vector(self, req: SearchRequest) -> np.ndarray:
        """Decode (and fetch) the request's photo, then embed it with the image tower."""
        from vitrina.images import decode_image, fetch_url

        data = req.image
        if data is None and req.image_url is not None:
            ic = self.cfg.indexer
            data = fetch_url(req.image_url, ic.url_timeout_s, self.cfg.search.max_upload_bytes,
                             ic.allow_private_urls)
        assert data is not None
        try:
            encoder = self.image_encoder()
        except ModelUnavailable:
            decode_image(data, self.cfg.search.max_image_pixels)  # a bad photo is still the client's error (4xx)
            raise
        image = decode_image(data, self.cfg.search.max_image_pixels, fit=encoder.decode_size)
        return np.asarray(encoder.encode([image])[0], dtype=np.float32)

    def query_vector(self, text_vec: np.ndarray | None, photo_vec: np.ndarray | None,
                     image_weight: float) -> np.ndarray | None:
        """The query in the fused space: text alone, photo alone, or fuse(text, photo, 1 - w, w)."""
        from encoders.fusion import fuse

        if text_vec is not None and photo_vec is not None:
            if image_weight <= 0.0:
                return fuse(text_vec, None, 1.0, 0.0)
            if image_weight >= 1.0:
                return fuse(photo_vec, None, 1.0, 0.0)
            return fuse(text_vec, photo_vec, 1.0 - image_weight, image_weight)
        return text_vec if text_vec is not None else photo_vec

    # ---- search -----------------------------------------------------------------------------------------
    def search(self, req: SearchRequest, ranker: Reranker | None = None) -> dict[str, Any]:
        """Ranked results for a validated request: {"results", "total", "took_ms"[, "facets"]}.

        Facets count the values of the requested fields over the ranked results (`total` of them: the
        candidates the query and filters found, before paging), so they follow the query and the filters.
        `ranker` replaces the configured learned ranker ([ranker].search_model) for this search (e.g. a Capture
        collecting training data); with one, the body also holds "_features" (the shown items' rows) for the log.
        """
        t0 = time.perf_counter()
        s = self.cfg.search
        photo = self.photo_vector(req) if req.has_photo else None  # bad photos fail before any search
        reading = self.read_query(req.q) if req.mode == "hybrid" and req.q and self.cfg.understand.enabled else None
        text_vec = None
        if req.q and req.mode != "keyword":
            text_vec = reading.vector if reading is not None and reading.vector is not None else \
                self.text_vector(reading.text if reading else req.q)
        qvec = self.query_vector(text_vec, photo, req.image_weight)
        user = borrow(self, self.profiles.get(req.user_id)) if req.user_id is not None else None
        ranker = ranker if ranker is not None else configured_ranker(self)
        rerank = user is not None or self.cfg.personal.popularity_weight > 0 or ranker is not None
        pool = max(s.candidates, req.offset + req.k)
        about: dict[str, Any] = {}
        hits, explain = self._retrieve(req, qvec, pool, user, reading, about)
        if photo is not None and req.mode != "keyword":
            hits, explain = photo_boost(hits, explain, self.read_photo(photo), s.photo_attribute_weight)
        ranked = self._rank(hits, explain, user, req.user_id, ranker is not None) if rerank \
            else list(zip(hits, explain))
        if ranker is not None:  # the learned ranker re-orders the blend's top-N (search.query.learned)
            ranked = ranker.rerank(self, ranked, qvec, user, self.profiles.clock())
        page = ranked[req.offset:req.offset + req.k]
        if not rerank:
            self._plain(page)
        features = ranker.finish(page) if ranker is not None else None
        self._add_cosines(page, qvec)
        out: dict[str, Any] = {"results": [self.result(h, e) for h, e in page], "total": len(ranked)}
        if features is not None:
            out["_features"] = features
        if reading is not None:
            out["understood"] = about
        if req.facets:
            out["facets"] = facet_counts((h.payload for h, _ in ranked), req.facets)
        out["took_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        return out

    def _retrieve(self, req: SearchRequest, qvec: np.ndarray | None, pool: int, user: UserState | None = None,
                  reading: Reading | None = None, about: dict[str, Any] | None = None
                  ) -> tuple[list[Hit], list[dict[str, Any]]]:
        """Candidates (best first) with their per-mode explain parts, and the relevance the rerank uses.

        Hybrid text search for a known shopper adds a third list (search.shopper.lookup.personal_list): the items
        nearest to the user vector among those carrying the attribute values the query names, so the rerank can
        reach items of the asked kind that suit the shopper but sit below the query's own top-N.
        With a `reading` (search.query.reading), keyword and vector search use its text, a price it read filters,
        its attribute readings weigh in, the fusion weights follow the query (put in `about`), and items with a
        value the shopper ruled out go last (search.query.hybrid)."""
        # no vectors come back: the personal rerank asks the store for the user's cosines (search.shopper.lookup)
        from search.query.reading import hybrid_weights

        s, pc, filters, st = self.cfg.search, self.cfg.personal, req.filters or None, self.store
        if req.mode == "keyword":
            hits = st.query(self.alias, KeywordQuery(req.q), filters, limit=pool)
            return hits, [{"keyword": h.score, "keyword_rank": i + 1, "relevance": h.score}
                          for i, h in enumerate(hits)]
        if qvec is None:
            raise BadInput("nothing to search with", "give 'q' and/or an image")
        if req.mode in ("vector", "text", "image"):
            using = "fused" if req.mode == "vector" else req.mode
            hits = st.query(self.alias, DenseQuery(qvec, using), filters, limit=pool)
            explain = [{"dense": h.score, "dense_rank": i + 1, "relevance": h.score} for i, h in enumerate(hits)]
            if using == "fused":  # the score is already the cosine in the fused space that explain shows
                for h, e in zip(hits, explain):
                    e["vector"] = h.score
            return hits, explain
        # hybrid: weighted RRF of the keyword and the fused dense candidates, fused here in the engine. With a
        # photo the text refines it ("like this, but red"): the fused query vector already holds the text,
        # and a keyword list would pull in items that merely share a word, so only the dense list is used.
        if reading is not None and reading.price is not None:
            filters = with_price(req.filters, reading.price)
        text = reading.text if reading is not None else req.q
        u = self.cfg.understand
        # the fused list, the keyword list and the reading's text neighbours share the filters: one engine call
        # (the neighbours list asks for its top neighbour_k only: the same graph search, [store].hnsw_ef wide, and
        # fewer candidates re-scored and turned into hits)
        with_keyword = bool(req.q) and not req.has_photo
        parts: list[Any] = [DenseQuery(qvec, "fused")] + ([KeywordQuery(text)] if with_keyword else [])
        by_text = reading is not None and u.neighbours_using == "text" and not req.has_photo and u.neighbours > 0
        if by_text and u.neighbour_k <= pool:
            parts.append(DenseQuery(qvec, "text", top=u.neighbour_k))
        lists = st.query_batch(self.alias, parts, filters, limit=pool)
        dense, keyword = lists[0], (lists[1] if with_keyword else [])
        if reading is not None:
            near = dense
            if by_text:
                near = lists[-1][:u.neighbour_k] if u.neighbour_k <= pool else \
                    st.query(self.alias, DenseQuery(qvec, "text"), filters, limit=u.neighbour_k)
            reading = reading.with_neighbours(near, u.neighbours, u.neighbour_k)
            named = reading.named()
            weights, signals = hybrid_weights(self.cfg, reading, keyword, self.reader().values)
            share, excluded = reading.share, (reading.excluded if reading.exclude else None)
            if about is not None:
                about.update(reading.explain(), weights=weights.as_dict(), signals=signals.as_dict())
        else:
            named = self.matcher().match(req.q) if req.q and (s.attribute_weight > 0 or user is not None) else {}
            weights = FusionWeights(s.keyword_weight, s.vector_weight, s.attribute_weight)
            share, excluded = (lambda p: match_share(p, named)), None
        mine = personal_list(st, self.alias, pc.candidates, user, named, req.filters) \
            if req.q and not req.has_photo else []
        rows = hybrid_rows(keyword, dense, mine, weights, pc.candidate_weight, s.rrf_k, share, excluded)
        rows = rows[:pool + (len(mine) if pc.candidate_extend else 0)]
        return [h for h, _ in rows], [e for _, e in rows]

    def read_query(self, q: str) -> Reading:
        """What a hybrid text query is read as (search.query.reading), cached per query text."""
        return self.reader().read(q, self.text_vector)

    def reader(self) -> QueryReader:
        """The query reader of the collection behind the alias, built when the alias moves (its value index is
        computed once per index build and kept under <data>/understand/)."""
        matcher = self.matcher()  # re-checks the alias every 30 s
        collection = self._matcher[1] if self._matcher is not None else None
        cached = self._reader
        if cached is None or cached[0] != collection:
            with self._locks["reader"]:
                if self._reader is None or self._reader[0] != collection:
                    from search.query.reading import open_reader

                    self._reader = (collection, open_reader(self.cfg, self.store, self.alias, str(collection), matcher,
                                                            self.text_encoder()))
                cached = self._reader
        return cached[1]

    def read_photo(self, photo: np.ndarray) -> dict[str, tuple[str, float]]:
        """Attribute values the image tower's label head reads from a photo vector ({field: (value, p)}), those
        at least [search].photo_attribute_min_prob likely; {} when the tower has no head or it is switched off."""
        s = self.cfg.search
        head = getattr(self.image_encoder(), "labels", None) if s.photo_attribute_weight > 0 else None
        if head is None:
            return {}
        return {f: (v, p) for f, (v, p) in head.predict(photo).items() if p >= s.photo_attribute_min_prob}

    def matcher(self) -> AttributeMatcher:
        """Attribute values of the collection behind the alias (re-read when the alias moves; checked every 30 s)."""
        now = time.monotonic()
        cached = self._matcher
        if cached is not None and now - cached[0] < 30.0:
            return cached[2]
        with self._locks["matcher"]:
            collection = self.store.get_alias(self.alias)
            if self._matcher is None or self._matcher[1] != collection:
                fields = list(self.cfg.catalogue.filterable)
                values = self.store.facets(self.alias, fields, None, limit=100_000) if fields else {}
                self._matcher = (now, collection, AttributeMatcher(values))
            else:
                self._matcher = (now, collection, self._matcher[2])
            return self._matcher[2]

    @staticmethod
    def _plain(page: list[tuple[Hit, dict[str, Any]]]) -> None:
        """No shopper (or a cold-start one) and no popularity prior: the engine's order and scores, the rerank's
        explain parts at zero (set on the shown page only)."""
        for _, e in page:
            e.update(personal=0.0, affinity=0.0, popularity=0.0, blend=0.0, final=e["relevance"])

    def _rank(self, hits: list[Hit], explain: list[dict[str, Any]], user: UserState | None,
              user_id: str | None, raw: bool = False) -> list[tuple[Hit, dict[str, Any]]]:
        """The personal rerank of the candidates (search.shopper.personal.rerank); parts go into explain, and with
        `raw` (a learned ranker reads them) the unweighted user cosine, shared values, popularity and bought flag."""
        if not hits:
            return []
        from search.shopper.personal import affinity_weights, blend_weight, evidence_at, rerank

        pc, now = self.cfg.personal, self.profiles.clock()
        ids = [h.id for h in hits]
        purchased = aff = None
        weights = affinity_weights(pc) if user is not None and user_id is not None else {}
        if user is not None and user_id is not None and (pc.purchased == "demote" or weights or raw):
            if pc.purchased == "demote" or raw:
                bought = self.profiles.purchased(user_id)
                purchased = np.array([i in bought for i in ids], dtype=bool)
            if weights:
                history = self.profiles.recent_purchases(user_id, pc.affinity_history)
                aff = affinity_to(self.store, self.alias, hits, history, weights)
        popularity = None
        if pc.popularity_weight > 0 or raw:
            pop = self.profiles.popularity(ids, now=now)
            popularity = np.array([pop.get(i, 0.0) for i in ids], dtype=np.float64)
        known = {h.id: e.pop(_USER_COS) for h, e in zip(hits, explain) if _USER_COS in e}
        cos = user_cosines(self.store, self.alias, user, ids, known) if user is not None else None
        if cos is None:
            user = None
        relevance = np.array([e["relevance"] for e in explain], dtype=np.float64)
        final, parts = rerank(relevance, None, user, pc, purchased=purchased if pc.purchased == "demote" else None,
                              popularity=popularity if pc.popularity_weight > 0 else None, now=now,
                              item_cosines=cos, affinity=aff)
        blend = blend_weight(evidence_at(user, now, pc), pc) if user is not None else 0.0
        for i, e in enumerate(explain):
            e.update(relevance_norm=float(parts["relevance"][i]), personal=float(parts["personal"][i]),
                     affinity=float(parts["affinity"][i]),
                     popularity=float(parts["popularity"][i]), demotion=float(parts["demotion"][i]),
                     blend=blend, final=float(final[i]))
            if raw:
                e.update(user_cosine=float(cos[i]) if cos is not None else 0.0,
                         shared=float(aff[i]) if aff is not None else 0.0,
                         item_popularity=float(popularity[i]) if popularity is not None else 0.0,
                         bought=bool(purchased[i]) if purchased is not None else False)
        order = sorted(range(len(hits)), key=lambda i: -final[i])  # stable: ties keep the engine's order
        return [(hits[i], explain[i]) for i in order]

    def _add_cosines(self, page: list[tuple[Hit, dict[str, Any]]], qvec: np.ndarray | None) -> None:
        """explain["vector"]: cosine of each shown item's stored fused vector to the query's fused vector."""
        if qvec is None:
            for _, e in page:
                e["vector"] = None
            return
        page = [(h, e) for h, e in page if e.get("vector") is None]  # dense hits on "fused" carry it already
        ids = [h.id for h, _ in page]  # candidates come without vectors: read just the fused ones shown
        fetched = {h.id: h.vectors.get("fused")
                   for h in self.store.retrieve(self.alias, ids, with_vectors=("fused",))} if ids else {}
        for (h, e), cos in zip(page, cosines(qvec, [fetched.get(h.id) for h, _ in page])):
            e["vector"] = cos

    # ---- results ----------------------------------------------------------------------------------------
    def result(self, hit: Hit, explain: dict[str, Any] | None = None, detail: bool = False) -> dict[str, Any]:
        """One result in the API's shape (see search.query.results.api_result)."""
        return api_result(hit, explain, detail)

    # ---- items ------------------------------------------------------------------------------------------
    def get_hit(self, item_id: str, with_vectors: bool = False) -> Hit:
        hits = self.store.retrieve(self.alias, [item_id], with_vectors=with_vectors)
        if not hits:
            raise NotFound(f"unknown item {item_id!r}", "no item with this id in the index")
        return hits[0]

    def item(self, item_id: str) -> dict[str, Any]:
        return self.result(self.get_hit(item_id), detail=True)

    def similar(self, item_id: str, k: int, offset: int = 0, filters: Filters | None = None
                ) -> dict[str, Any]:
        """More like this: nearest neighbours of the item's stored fused vector, the item itself left out."""
        t0 = time.perf_counter()
        hit = self.get_hit(item_id, with_vectors=True)
        vec = hit.vectors.get("fused")
        if vec is None:
            raise NotFound(f"item {item_id!r} has no stored vector", "reindex the catalogue")
        base = filters or Filters()
        f = Filters(equals=base.equals, ranges=base.ranges, exclude_ids=tuple(base.exclude_ids) + (item_id,))
        hits = self.store.query(self.alias, DenseQuery(np.asarray(vec, dtype=np.float32), "fused"), f,
                                limit=k, offset=offset)
        results = [self.result(h, {"vector": h.score, "relevance": h.score, "final": h.score}) for h in hits]
        return {"results": results, "total": len(results), "took_ms": round((time.perf_counter() - t0) * 1e3, 2)}

    def image_path(self, item_id: str) -> Path:
        """The local file of an item's picture; NotFound when it has none or it is remote."""
        return local_image(self.cfg.catalogue, item_id, self.get_hit(item_id).payload.get("image"))

    # ---- feedback and profiles --------------------------------------------------------------------------
    def record_feedback(self, events: Sequence[FeedbackEvent]) -> int:
        """Store events (see search.shopper.lookup.record_events); NotFound names unknown items."""
        return record_events(self.store, self.alias, self.profiles, events)

    def profile(self, user_id: str) -> dict[str, Any]:
        prof = self.profiles.profile(user_id)
        if prof is None:
            raise NotFound(f"unknown shopper {user_id!r}", "no feedback recorded for this user_id")
        return {**prof, "user_id": user_id}

    def forget(self, user_id: str) -> bool:
        return self.profiles.delete(user_id)

    # ---- health and size --------------------------------------------------------------------------------
    def index_size(self, fresh: bool = False, max_age_s: float = 10.0) -> int:
        """Items behind the alias (cached a few seconds); -1 when there is no index."""
        at, n = self._count_cache
        if fresh or time.monotonic() - at > max_age_s:
            try:
                n = int(self.store.count(self.alias))
            except VitrinaError:
                n = -1
            self._count_cache = (time.monotonic(), n)
        return n

    def items_written(self) -> None:
        """Items were written through this service: the next index_size (and /health) counts again."""
        self._count_cache = (0.0, self._count_cache[1])

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {"alias": self.alias, "collection": None, "points": -1}
        ok = True
        try:
            info["collection"] = self.store.get_alias(self.alias)
            # the count index_size keeps (exact counts cost ~2.5 ms at 44k), taken again when the alias moved
            info["points"] = self.index_size(fresh=info["collection"] != self._counted)
            self._counted = info["collection"]
            ok = info["collection"] is not None and info["points"] >= 0
        except (VitrinaError, OSError) as e:
            info["error"] = str(e)
            ok = False
        return {"status": "ok" if ok else "degraded", "index": info, "image_tower": self._tower_status(),
                "models_loaded": {"text": self._text is not None, "image": self._image is not None}}

    def _tower_status(self) -> dict[str, Any]:
        try:
            from encoders import image_tower_status

            return image_tower_status(self.cfg)
        except (VitrinaError, ImportError, OSError) as e:
            return {"available": False, "reason": str(e)}

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except (VitrinaError, OSError) as e:  # closing is best effort
                log.warning("closing the store failed: %s", e)

