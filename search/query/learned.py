"""Learned rankers: model files from `vitrina train-ranker`, loaded once, applied to the hand blend's top-N."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from vitrina.errors import ConfigError

if TYPE_CHECKING:
    from search.query.engine import SearchService
    from search.shopper.personal import UserState
    from search.store.interface import Hit

FORMAT = "vitrina-ranker/1"
KINDS = ("lambdarank", "logistic")
Ranked = list[tuple["Hit", dict[str, Any]]]


class Scorer(Protocol):
    """What a reranker needs of a model: a version, its features, scores and per-feature contributions."""

    version: str
    features: tuple[str, ...]

    def score(self, x: np.ndarray) -> np.ndarray: ...
    def contributions(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Logistic:
    """A logistic click model over standardised features: logit = bias + sum_j w_j (x_j - mean_j) / scale_j."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale * self.weights

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.contributions(x).sum(axis=1) + self.bias

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "bias": self.bias, "mean": self.mean.tolist(),
                "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Logistic:
        return cls(np.asarray(d["weights"], dtype=np.float64), float(d["bias"]),
                   np.asarray(d["mean"], dtype=np.float64), np.asarray(d["scale"], dtype=np.float64))


@dataclass(frozen=True)
class RankerModel:
    """One model file: its kind, the surface it ranks (search, recommend), its features, card and version."""

    kind: str
    surface: str
    features: tuple[str, ...]
    version: str
    card: dict[str, Any] = field(default_factory=dict)
    booster: Any = None  # lightgbm.Booster (lambdarank)
    logistic: Logistic | None = None

    def score(self, x: np.ndarray) -> np.ndarray:
        if self.logistic is not None:
            return self.logistic.score(x)
        return np.asarray(self.booster.predict(np.asarray(x, dtype=np.float64)), dtype=np.float64)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per feature, what it added to the score (LightGBM: SHAP values; logistic: w_j x standardised x_j)."""
        if self.logistic is not None:
            return self.logistic.contributions(x)
        return np.asarray(self.booster.predict(np.asarray(x, dtype=np.float64), pred_contrib=True))[:, :-1]


def save_model(path: Path, kind: str, surface: str, features: Sequence[str], card: dict[str, Any],
               booster: Any = None, logistic: Logistic | None = None) -> RankerModel:
    """Write the model file (atomically: temp file, fsync, rename) and its card beside it (<name>.card.json);
    the version is the first 12 hex digits of the SHA-256 of the model itself."""
    if kind not in KINDS:
        raise ConfigError(f"unknown ranker kind {kind!r}", f"one of {KINDS}")
    model = booster.model_to_string() if booster is not None else logistic.to_json()  # type: ignore[union-attr]
    version = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:12]
    card = {**card, "version": version, "kind": kind, "surface": surface, "features": list(features)}
    body = {"format": FORMAT, "kind": kind, "surface": surface, "features": list(features), "version": version,
            "card": card, "model": model}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path, body), (path.with_suffix(".card.json"), card)):
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1 if target != path else None)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    return RankerModel(kind, surface, tuple(features), version, card, booster, logistic)


_CACHE: dict[str, tuple[tuple[int, int], RankerModel]] = {}
_CACHE_LOCK = threading.Lock()


def load_model(path: str | Path, surface: str | None = None) -> RankerModel:
    """The model in a file (kept in memory until the file changes); ConfigError when missing or not a model."""
    key = str(Path(path).resolve())
    try:
        st = os.stat(key)
    except OSError as e:
        raise ConfigError(f"ranker model not found: {path}", "train one with `vitrina train-ranker`") from e
    stamp = (st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            model = hit[1]
        else:
            model = _read(Path(key))
            _CACHE[key] = (stamp, model)
    if surface is not None and model.surface != surface:
        raise ConfigError(f"{path} ranks {model.surface}, not {surface}")
    return model


def _read(path: Path) -> RankerModel:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("format") != FORMAT or body.get("kind") not in KINDS:
            raise ValueError(f"not a {FORMAT} file")
        booster = logistic = None
        if body["kind"] == "lambdarank":
            import lightgbm  # only when a LightGBM ranker is configured

            booster = lightgbm.Booster(model_str=body["model"])
        else:
            logistic = Logistic.from_json(body["model"])
        return RankerModel(body["kind"], body["surface"], tuple(body["features"]), body["version"],
                           body.get("card", {}), booster, logistic)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read ranker model {path}: {e}") from e


def configured_ranker(service: SearchService, surface: str = "search") -> Reranker | None:
    """The learned ranker the service's [ranker] names for a surface (search: the online click model when
    [ranker].online), or None for the hand blend."""
    rc = service.cfg.ranker
    if surface == "search" and rc.online:
        from search.online.clicks import online_model

        return Reranker(online_model(service), rc.candidates)
    path = rc.search_model if surface == "search" else rc.recommend_model
    if path:
        return Reranker(load_model(path, surface), rc.candidates)
    return Observe(rc.candidates) if surface == "search" and service.cfg.impressions.features else None


class Reranker:
    """Re-orders the hand blend's top `candidates` by a model's score; each of them gets explain["ranker"] and
    keeps its feature row (explain["_x"]) until `finish` turns the page's rows into contributions."""

    def __init__(self, model: Scorer, candidates: int) -> None:
        self.model = model
        self.candidates = candidates

    def features(self, service: SearchService, ranked: Ranked, query: np.ndarray | None, user: UserState | None,
                 now: float) -> np.ndarray:
        from search.query.features import SEARCH_FEATURES, search_matrix
        from search.shopper.segments import segment_cosines

        x = search_matrix(service, [h for h, _ in ranked], [e for _, e in ranked], query, user, now,
                          segment_cosines(service, user, [h.id for h, _ in ranked]))
        if tuple(self.model.features) != SEARCH_FEATURES:
            x = x[:, [SEARCH_FEATURES.index(f) for f in self.model.features]]
        return x

    def rerank(self, service: SearchService, ranked: Ranked, query: np.ndarray | None, user: UserState | None,
               now: float) -> Ranked:
        top, rest = ranked[:self.candidates], ranked[self.candidates:]
        if not top:
            return ranked
        x = self.features(service, top, query, user, now)
        scores = self.model.score(x)
        for (_, e), row, s in zip(top, x, scores):
            e["_x"] = row
            e["ranker"] = {"model": self.model.version, "score": float(s)}
        order = sorted(range(len(top)), key=lambda i: -scores[i])  # stable: ties keep the blend's order
        return [top[i] for i in order] + rest

    def rerank_items(self, service: SearchService, user_id: str, ranked: list[str],
                     parts: Mapping[str, Mapping[str, float]], final: Mapping[str, float], now: float
                     ) -> tuple[list[str], dict[str, tuple[np.ndarray, float]]]:
        """Recommendations: re-order the blend's top `candidates` ids; returns the new order and, per re-scored
        id, its feature row and score (for `explain_items`)."""
        from search.query.features import RECOMMEND_FEATURES, recommend_matrix

        top, rest = ranked[:self.candidates], ranked[self.candidates:]
        if not top:
            return ranked, {}
        x = recommend_matrix(service, user_id, top, parts, final, now)
        if tuple(self.model.features) != RECOMMEND_FEATURES:
            x = x[:, [RECOMMEND_FEATURES.index(f) for f in self.model.features]]
        scores = self.model.score(x)
        order = sorted(range(len(top)), key=lambda i: -scores[i])
        return [top[i] for i in order] + rest, {i: (row, float(v)) for i, row, v in zip(top, x, scores)}

    def explain_items(self, scored: Mapping[str, tuple[np.ndarray, float]], shown: Sequence[str]
                      ) -> tuple[dict[str, dict[str, Any]], list[list[float]] | None]:
        """explain["ranker"] of each shown recommendation (score, contributions) and their feature rows."""
        ids = [i for i in shown if i in scored]
        if not ids:
            return {}, None
        x = np.stack([scored[i][0] for i in ids])
        out = {}
        for i, c in zip(ids, self.model.contributions(x)):
            out[i] = {"model": self.model.version, "score": scored[i][1], "contributions": _top(self.model, c)}
        return out, (x.tolist() if len(ids) == len(shown) else None)

    def finish(self, page: Ranked) -> list[list[float]] | None:
        """The page's feature rows (for the impression log), with each result's feature contributions added to
        explain["ranker"]["contributions"] (largest first); None when some result has none."""
        rows = [e.pop("_x", None) for _, e in page]
        if not page or any(r is None for r in rows):
            return None
        x = np.stack(rows)  # type: ignore[arg-type]
        contrib = self.model.contributions(x)
        for (_, e), c in zip(page, contrib):
            e["ranker"]["contributions"] = _top(self.model, c)
        return x.tolist()


def _top(model: Scorer, contributions: np.ndarray) -> dict[str, float]:
    """Feature -> contribution, largest first, the negligible left out."""
    parts = sorted(zip(model.features, contributions.tolist()), key=lambda t: -abs(t[1]))
    return {name: round(v, 5) for name, v in parts if abs(v) >= 5e-6}


class Capture(Reranker):
    """Keeps the hand blend's order and records each search's top-N ids and feature matrix (training data:
    what the engine would have shown, and what it knew about each)."""

    def __init__(self, candidates: int, surface: str = "search") -> None:
        from search.query.features import RECOMMEND_FEATURES, SEARCH_FEATURES

        super().__init__(_Identity(SEARCH_FEATURES if surface == "search" else RECOMMEND_FEATURES), candidates)
        self.groups: list[tuple[list[str], np.ndarray]] = []

    def rerank(self, service: SearchService, ranked: Ranked, query: np.ndarray | None, user: UserState | None,
               now: float) -> Ranked:
        top = ranked[:self.candidates]
        if top:
            self.groups.append(([h.id for h, _ in top], self.features(service, top, query, user, now)))
        return ranked

    def finish(self, page: Ranked) -> list[list[float]] | None:
        return None

    def rerank_items(self, service: SearchService, user_id: str, ranked: list[str],
                     parts: Mapping[str, Mapping[str, float]], final: Mapping[str, float], now: float
                     ) -> tuple[list[str], dict[str, tuple[np.ndarray, float]]]:
        from search.query.features import recommend_matrix

        top = ranked[:self.candidates]
        if top:
            self.groups.append((list(top), recommend_matrix(service, user_id, top, parts, final, now)))
        return ranked, {}


class Observe(Reranker):
    """The hand blend ranks; the shown items' feature rows still go to the impression log ([impressions].features),
    so a ranker can later be trained from the shop's own clicks (`vitrina train-ranker --source log`)."""

    def __init__(self, candidates: int) -> None:
        from search.query.features import SEARCH_FEATURES

        super().__init__(_Identity(SEARCH_FEATURES), candidates)

    def rerank(self, service: SearchService, ranked: Ranked, query: np.ndarray | None, user: UserState | None,
               now: float) -> Ranked:
        top = ranked[:self.candidates]
        if top:
            for (_, e), row in zip(top, self.features(service, top, query, user, now)):
                e["_x"] = row
        return ranked

    def finish(self, page: Ranked) -> list[list[float]] | None:
        rows = [e.pop("_x", None) for _, e in page]
        return None if not page or any(r is None for r in rows) else np.stack(rows).tolist()  # type: ignore


@dataclass(frozen=True)
class _Identity:
    features: tuple[str, ...]
    version: str = "capture"

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)
