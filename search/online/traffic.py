"""Serving through the experiment: each response gets a request id, its shopper's variant and a line in the log."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from search.online.experiments import Experiments, Variant
from search.online.impressions import (
    IMPRESSION, ImpressionLog, features_of, impression_record, new_request_id, open_log,
)
from search.online.interleaving import coin, team_draft
from search.online.report import experiment_report
from search.query.request import FeedbackEvent, SearchRequest
from search.store.interface import Filters
from vitrina.errors import BadInput, NotFound, VitrinaError

if TYPE_CHECKING:
    from search.query.engine import SearchService
    from search.online.clicks import OnlineModel
    from search.shopper.recommend import Recommender

log = logging.getLogger(__name__)

Produce = Callable[[Variant | None, int], dict[str, Any]]  # (variant serving, how many from the top) -> response


class Traffic:
    """What the web layer calls: the service's responses, each assigned, logged and stamped
    ({"request_id", "experiment", "variant"} added to the body; with interleaving each result's explain names
    the `team` that placed it)."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.cfg = service.cfg
        self.experiments = Experiments(service.cfg)
        self._views = {name: service.with_config(c) for name, c in self.experiments.configs.items()}
        self._recommenders: dict[str | None, Recommender] = {}
        self._log: ImpressionLog | None = None
        self._lock = threading.Lock()
        self._feedback_lock = threading.Lock()
        self._events_seen = 0
        self._reports: dict[str, tuple[tuple[tuple[str, int], ...], dict[str, Any]]] = {}

    @property
    def log(self) -> ImpressionLog | None:
        """The impression log (opened on first use); None when [impressions].enabled is off."""
        ic = self.cfg.impressions
        if self._log is None and ic.enabled:
            with self._lock:
                if self._log is None:
                    self._log = open_log(self.cfg.data_dir, ic.sync_s, ic.keep_days)
        return self._log

    @property
    def online(self) -> OnlineModel | None:
        """The online click model when any variant (or the config itself) serves it ([ranker].online)."""
        if not any(c.ranker.online for c in [self.cfg, *self.experiments.configs.values()]):
            return None
        from search.online.clicks import online_model

        return online_model(self.service, self.log)

    def segment(self, user_id: str | None) -> int | None:
        """The shopper's interest group now ([segments].k > 0 and groups built), for the report per segment."""
        if user_id is None or self.cfg.segments.k <= 0:
            return None
        from search.shopper.segments import segment_of

        return segment_of(self.service, self.service.profiles.get(user_id))

    def view(self, variant: Variant | None) -> SearchService:
        return self.service if variant is None else self._views[variant.name]

    def recommender(self, variant: Variant | None = None) -> Recommender:
        """One Recommender per variant, over that variant's view of the service."""
        from search.shopper.recommend import Recommender

        key = None if variant is None else variant.name
        found = self._recommenders.get(key)
        if found is None:
            with self._lock:
                found = self._recommenders.setdefault(key, Recommender(self.view(variant)))
        return found

    # ----- the four lists -----

    def _serve(self, surface: str, user_id: str | None, produce: Produce, k: int, offset: int = 0,
               query: str | None = None, mode: str | None = None) -> dict[str, Any]:
        """Assign, produce (twice and interleaved for method = interleave), log, stamp."""
        ex = self.experiments
        variant = ex.assign(user_id)
        request_id = new_request_id()
        teams: list[str] | None = None
        if variant is not None and ex.method == "interleave":
            first, second = ex.pair()
            out, teams = self._interleave(produce, first, second, k + offset, request_id)
            out["results"] = out["results"][offset:offset + k]
            teams = teams[offset:offset + k]
            name = f"{first.name}+{second.name}"
        else:
            out = produce(variant, k)
            name = None if variant is None else variant.name
        features = out.pop("_features", None)
        shown = [r["id"] for r in out["results"]]
        if self.log is not None:
            record = impression_record(request_id, surface, shown, user_id=user_id, offset=offset, query=query,
                                       mode=mode, experiment=ex.name if variant is not None else None,
                                       variant=name, teams=teams, features=features, segment=self.segment(user_id))
            try:
                self.log.write(record)
            except VitrinaError as e:  # the shopper still gets the answer; the log says what it missed
                log.warning("impression not logged: %s", e.message)
            if surface == "search" and features is not None and self.online is not None:
                self.online.remember(request_id, user_id, shown, offset, features_of(record))  # as a replay sees it
        out.update(request_id=request_id, experiment=ex.name if variant is not None else None, variant=name)
        return out

    def _interleave(self, produce: Produce, first: Variant, second: Variant, k: int, request_id: str
                    ) -> tuple[dict[str, Any], list[str]]:
        """Team-draft of the two variants' rankings (coin flips seeded by the request id)."""
        a, b = produce(first, k), produce(second, k)
        by_id = {r["id"]: r for r in b["results"]}
        by_id.update({r["id"]: r for r in a["results"]})
        feats = {}
        for body in (b, a):
            for r, row in zip(body["results"], body.get("_features") or ()):
                feats[r["id"]] = row
        items, teams = team_draft([r["id"] for r in a["results"]], [r["id"] for r in b["results"]], k,
                                  coin(request_id))
        names = {"A": first.name, "B": second.name}
        results = []
        for item, team in zip(items, teams):
            source = (a if team == "A" else b)["results"]
            r = next((x for x in source if x["id"] == item), by_id[item])
            results.append({**r, "explain": {**(r.get("explain") or {}), "team": names[team]}})
        out = {**a, "results": results, "total": max(a.get("total", 0), b.get("total", 0))}
        out.pop("_features", None)
        if feats and all(i in feats for i in items):
            out["_features"] = [feats[i] for i in items]
        return out, [names[t] for t in teams]

    def search(self, req: SearchRequest) -> dict[str, Any]:
        def produce(variant: Variant | None, k: int) -> dict[str, Any]:
            top = req if k == req.k else dataclasses.replace(req, k=k, offset=0)  # interleaving: from the top
            return self.view(variant).search(top)

        return self._serve("search", req.user_id, produce, req.k, req.offset, req.q or None, req.mode)

    def similar(self, item_id: str, k: int, offset: int = 0, filters: Filters | None = None,
                user_id: str | None = None) -> dict[str, Any]:
        def produce(variant: Variant | None, n: int) -> dict[str, Any]:
            return self.view(variant).similar(item_id, n, offset if n == k else 0, filters)

        return self._serve("similar", user_id, produce, k, offset, query=item_id)

    def recommendations(self, user_id: str, k: int, filters: Filters | None = None,
                        exclude_purchased: bool | None = None, sources: Sequence[str] | None = None
                        ) -> dict[str, Any]:
        def produce(variant: Variant | None, n: int) -> dict[str, Any]:
            return self.recommender(variant).for_user(user_id, n, filters, exclude_purchased, sources=sources)

        return self._serve("recommendations", user_id, produce, k)

    def also_bought(self, item_id: str, k: int, filters: Filters | None = None, user_id: str | None = None
                    ) -> dict[str, Any]:
        def produce(variant: Variant | None, n: int) -> dict[str, Any]:
            return self.recommender(variant).also_bought(item_id, n, filters)

        return self._serve("also_bought", user_id, produce, k, query=item_id)

    # ----- feedback and reports -----

    def feedback(self, events: Sequence[FeedbackEvent]) -> int:
        """Record events in the profile store (which checks the items), then in the impression log."""
        accepted = self.service.record_feedback(events)
        online, log_ = self.online, self.log
        if log_ is not None:
            with self._feedback_lock:  # log order = learning order: a restart replays exactly what came after
                for e in events:
                    at = log_.feedback(e.user_id, e.item_id, e.event, e.ts, e.request_id, e.position)
                    if online is not None:
                        online.learn(e.user_id, e.item_id, e.event, e.request_id, e.position, at=at)
        self._segments_after(len(events))
        return accepted

    def _segments_after(self, n: int) -> None:
        """Rebuild the interest groups once every [segments].rebuild_every feedback events (in the request that
        crosses the mark)."""
        sc = self.cfg.segments
        if sc.k <= 0 or sc.rebuild_every <= 0:
            return
        with self._lock:
            before = self._events_seen
            self._events_seen += n
            due = before // sc.rebuild_every != self._events_seen // sc.rebuild_every
        if due:
            from search.shopper.segments import rebuild

            rebuild(self.service.profiles, self.cfg)

    def prices(self, item_ids: Sequence[str]) -> Mapping[str, float]:
        """Catalogue prices of these items (none when the catalogue has no price column)."""
        if not self.cfg.catalogue.price or not item_ids:
            return {}
        out = {}
        for h in self.service.store.retrieve(self.service.alias, list(item_ids)):
            try:
                out[h.id] = float(h.payload.get("price"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
        return out

    def report(self, name: str) -> dict[str, Any]:
        """GET /api/experiments/<name>: the report from the impression log (the running experiment's variants
        in their configured order, control first)."""
        if self.log is None:
            raise NotFound("no impression log", "[impressions].enabled is off")
        ex = self.experiments
        running = name == ex.name and bool(ex.variants)
        order = [v.name for v in ex.variants] if running and ex.method == "ab" else \
            [v.name for v in ex.pair()] if running else []
        stamp = tuple((f.name, f.stat().st_size) for f in self.log.files())
        cached = self._reports.get(name)
        if cached is not None and cached[0] == stamp:  # the log has not grown since: the same report
            return cached[1]
        body = experiment_report(self.log.read(), name, self.cfg.experiments, order, self.prices)
        if not running and not body.get("variants") and not body.get("interleaving", {}).get("shoppers"):
            raise NotFound(f"no experiment {name!r}", "neither running nor in the impression log")
        body = {**body, "running": running}
        self._reports[name] = (stamp, body)
        return body

    def overview(self) -> dict[str, Any]:
        """GET /api/experiments: the running experiment and every experiment name the log holds."""
        seen: dict[str, int] = {}
        if self.log is not None:
            for r in self.log.read(kinds=(IMPRESSION,)):
                if r.get("experiment"):
                    seen[r["experiment"]] = seen.get(r["experiment"], 0) + 1
        ex = self.experiments
        running = None
        if ex.running:
            running = {"name": ex.name, "method": ex.method, "salt": ex.salt,
                       "variants": [{"name": v.name, "share": v.share, "overrides": dict(v.overrides)}
                                    for v in ex.variants]}
        return {"running": running, "experiments": [{"name": n, "impressions": c} for n, c in seen.items()]}

    def close(self) -> None:
        if any(c.ranker.online for c in [self.cfg, *self.experiments.configs.values()]):
            self.online.checkpoint()  # type: ignore[union-attr]
        if self._log is not None:
            self._log.close()


def check_name(name: str) -> str:
    """An experiment name as the URL gives it: letters, digits, - _ . (at most 64)."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise BadInput("not an experiment name", "letters, digits, - _ . (at most 64 characters)")
    return name
