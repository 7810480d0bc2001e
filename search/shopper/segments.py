"""Shopper segments: user vectors clustered into interest groups (k-means); a group's taste lent to thin profiles."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vitrina.errors import ConfigError

if TYPE_CHECKING:
    from search.query.engine import SearchService
    from search.shopper.personal import UserState
    from search.shopper.profiles import ProfileStore
    from vitrina.config import Config

FILENAME = "segments.npz"


@dataclass(frozen=True)
class Segments:
    """k interest groups: unit centroid vectors (the group's taste) and how many shoppers shaped each."""

    centroids: np.ndarray  # (k, dim) float32, unit rows
    sizes: np.ndarray  # (k,)
    built_at: float

    def nearest(self, vector: np.ndarray) -> int | None:
        """The group whose taste is nearest (cosine) to this vector; None when it has no direction or dimension
        differs (another model)."""
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(v))
        if norm == 0 or v.shape[0] != self.centroids.shape[1]:
            return None
        return int(np.argmax(self.centroids @ (v / norm)))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows (k-means++ start, cosine assignment, mean-then-normalise update);
    returns (unit centroids (k', dim), label per row) with k' = min(k, rows). An emptied group is restarted at
    the row farthest from its centroid."""
    x = _unit_rows(np.asarray(x, dtype=np.float64))
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros((0, x.shape[1] if x.ndim == 2 else 0)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        dist = np.clip(1.0 - np.max(x @ np.array(centres).T, axis=1), 0.0, None)
        total = float(dist.sum())
        centres.append(x[rng.choice(n, p=dist / total)] if total > 0 else x[rng.integers(n)])
    c = np.array(centres)
    labels = np.full(n, -1)
    for _ in range(iters):
        sims = x @ c.T
        new = np.argmax(sims, axis=1)
        for j in range(k):
            if not np.any(new == j):  # restart an empty group at the worst-served row
                worst = int(np.argmin(sims[np.arange(n), new]))
                new[worst] = j
        if np.array_equal(new, labels):
            break
        labels = new
        c = _unit_rows(np.stack([x[labels == j].mean(axis=0) for j in range(k)]))
    return c, labels


def build(profiles: ProfileStore, cfg: Config, now: float | None = None) -> Segments | None:
    """Group every shopper with at least [segments].min_evidence (decayed to now) into [segments].k groups."""
    from search.shopper.personal import evidence_at

    sc = cfg.segments
    if sc.k <= 0:
        return None
    now = profiles.clock() if now is None else now
    vectors = [s.vector for _, s in profiles.vectors() if evidence_at(s, now, cfg.personal) >= sc.min_evidence]
    dims = {v.shape[0] for v in vectors}
    if len(dims) > 1:  # profiles from two models: the current index's dimension is the most common one
        common = max(dims, key=lambda d: sum(v.shape[0] == d for v in vectors))
        vectors = [v for v in vectors if v.shape[0] == common]
    if len(vectors) < sc.k:
        return None
    c, labels = kmeans(np.stack(vectors), sc.k, sc.seed)
    return Segments(c.astype(np.float32), np.bincount(labels, minlength=c.shape[0]), time.time())


def save(path: Path, segments: Segments) -> None:
    """Write atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, centroids=segments.centroids, sizes=segments.sizes, built_at=np.array(segments.built_at))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rebuild(profiles: ProfileStore, cfg: Config) -> Segments | None:
    """Build the groups from the profiles now and store them beside them (<data dir>/segments.npz)."""
    seg = build(profiles, cfg)
    path = cfg.data_dir / FILENAME
    if seg is not None:
        save(path, seg)
    elif path.exists():
        path.unlink()
    return seg


_CACHE: dict[str, tuple[int, Segments | None]] = {}
_LOCK = threading.Lock()


def current(cfg: Config) -> Segments | None:
    """The stored groups of this deployment (re-read when the file changes), None when there are none."""
    if cfg.segments.k <= 0:
        return None
    path = cfg.data_dir / FILENAME
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    key = str(path)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            with np.load(path) as z:
                seg: Segments | None = Segments(z["centroids"], z["sizes"], float(z["built_at"]))
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read shopper segments {path}: {e}", "run `vitrina rebuild-signals`") from e
        _CACHE[key] = (stamp, seg)
        return seg


def segment_of(service: SearchService, user: UserState | None) -> int | None:
    """The shopper's interest group (None without groups or a taste vector)."""
    seg = current(service.cfg)
    return None if seg is None or user is None else seg.nearest(user.vector)


def borrow(service: SearchService, user: UserState | None) -> UserState | None:
    """The shopper's taste leaned toward their group's: with evidence e, direction (1 - l) unit(own) + l centroid,
    l = borrow * s / (e + s), s = [segments].borrow_saturation; evidence and counts unchanged (the blend weight
    still follows the shopper's own history). Unchanged without groups, a shopper, or borrow = 0."""
    from search.shopper.personal import evidence_at, unit

    sc = service.cfg.segments
    if user is None or sc.k <= 0 or sc.borrow <= 0:
        return user
    seg = current(service.cfg)
    group = seg.nearest(user.vector) if seg is not None else None
    if seg is None or group is None:
        return user
    e = evidence_at(user, service.profiles.clock(), service.cfg.personal)
    lean = sc.borrow * sc.borrow_saturation / (e + sc.borrow_saturation)
    vector = (1.0 - lean) * unit(user.vector) + lean * seg.centroids[group]
    return replace(user, vector=vector.astype(np.float32))


def segment_cosines(service: SearchService, user: UserState | None, ids: Sequence[str]) -> np.ndarray | None:
    """Cosine of each item's fused vector to the shopper's group taste; None without groups or a shopper."""
    from search.query.features import similarities

    seg = current(service.cfg)
    group = seg.nearest(user.vector) if seg is not None and user is not None else None
    if seg is None or group is None:
        return None
    return similarities(service.store, service.alias, seg.centroids[group], ids, "fused")
