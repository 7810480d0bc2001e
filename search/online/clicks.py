"""The online click model: a logistic model over the ranker features that each feedback event adjusts as it arrives
(FTRL-Proximal), bounded per shopper, checkpointed durably and caught up from the impression log after a restart."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from search.online.impressions import FEEDBACK, IMPRESSION, Position, features_of
from search.query.learned import Logistic
from vitrina.config import RankerConfig

if TYPE_CHECKING:
    from search.query.engine import SearchService
    from search.online.impressions import ImpressionLog

log = logging.getLogger(__name__)

CHECKPOINT = "online_ranker.json"
POSITIVE = ("click", "cart", "purchase")
REMEMBERED = 20_000  # recent responses whose feature rows are kept to learn from their feedback
HOUR_S = 3600.0
CLIP = 5.0  # standardised features are clipped to +-CLIP, so one example's gradient is bounded


@dataclass
class Shown:
    user_id: str
    items: list[str]
    offset: int
    rows: np.ndarray
    clicked: set[int]


def examples(shown: Shown, position: int) -> list[tuple[np.ndarray, float]]:
    """What one click at a 0-based position teaches (skip-above, Joachims 2002): the clicked row is a positive,
    each row shown above it that has not been clicked is a negative (the shopper passed it on the way down)."""
    if not 0 <= position < len(shown.rows):
        return []
    out = [(shown.rows[position], 1.0)]
    out += [(shown.rows[i], 0.0) for i in range(position) if i not in shown.clicked]
    return out


class OnlineModel:
    """FTRL-Proximal around a starting logistic model w0: w = w0 + d, d_i = -z_i / ((beta + sqrt(n_i)) / alpha + l2)
    (McMahan et al. 2013, per-coordinate learning rates; the L2 keeps it near the trained model). Scores and
    contributions like the model it started from; `learn` takes feedback events, `remember` logged responses."""

    beta = 1.0

    def __init__(self, start: Logistic, features: Sequence[str], cfg: RankerConfig, path: Path | None,
                 base_version: str = "zero") -> None:
        self.features = tuple(features)
        self.cfg = cfg
        self.path = path
        self.base = start
        self.base_version = base_version
        size = len(self.features) + 1  # + bias
        self.z = np.zeros(size)
        self.n = np.zeros(size)
        self.updates = 0
        self.skipped = 0
        self.position = Position()
        self._since_checkpoint = 0
        self._lock = threading.Lock()
        self._shown: OrderedDict[str, Shown] = OrderedDict()
        self._budget: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # shopper -> [hour start, count]
        self._delta = np.zeros(size)

    # ----- the model -----

    @property
    def version(self) -> str:
        return f"online:{self.base_version}+{self.updates}"

    def weights(self) -> tuple[np.ndarray, float]:
        d = self._delta
        return self.base.weights + d[:-1], self.base.bias + float(d[-1])

    def _x(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.base.mean) / self.base.scale
        return np.clip(z, -CLIP, CLIP)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        w, _ = self.weights()
        return self._x(x) * w

    def score(self, x: np.ndarray) -> np.ndarray:
        w, b = self.weights()
        return self._x(x) @ w + b

    def _step(self, row: np.ndarray, label: float) -> None:
        """One FTRL-Proximal update on one example (the caller holds the lock)."""
        alpha, l2 = self.cfg.online_rate, self.cfg.online_l2
        x = np.append(self._x(row[None, :])[0], 1.0)
        w, b = self.weights()
        p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, float(x[:-1] @ w + b)))))
        g = (p - label) * x
        sigma = (np.sqrt(self.n + g * g) - np.sqrt(self.n)) / alpha
        self.z += g - sigma * self._delta
        self.n += g * g
        self._delta = -self.z / ((self.beta + np.sqrt(self.n)) / alpha + l2)
        self.updates += 1

    def update(self, row: np.ndarray, label: float) -> None:
        """One example straight in (no shopper budget): replaying examples, experiments."""
        with self._lock:
            self._step(np.asarray(row, dtype=np.float64), float(label))

    # ----- feedback in -----

    def remember(self, request_id: str, user_id: str | None, items: Sequence[str], offset: int,
                 rows: np.ndarray | None) -> None:
        """Keep a logged response's feature rows (the most recent REMEMBERED) to learn from its feedback."""
        if user_id is None or rows is None or len(rows) != len(items) or not len(items):
            return
        with self._lock:
            self._shown[request_id] = Shown(user_id, list(items), offset, np.asarray(rows, dtype=np.float64), set())
            while len(self._shown) > REMEMBERED:
                self._shown.popitem(last=False)

    def _allowed(self, user_id: str, n: int, now: float) -> int:
        """How many of n examples this shopper may still add this hour ([ranker].online_shopper_cap)."""
        hour = self._budget[user_id]
        if now - hour[0] >= HOUR_S:
            hour[0], hour[1] = now, 0.0
        allowed = max(0, min(n, int(self.cfg.online_shopper_cap - hour[1])))
        hour[1] += allowed
        return allowed

    def learn(self, user_id: str, item_id: str, event: str, request_id: str | None, position: int | None,
              now: float | None = None, at: Position | None = None, mark_only: bool = False) -> int:
        """Fold one feedback event in (`at`: where the log holds it; the checkpoint remembers the latest); returns
        the examples it added (0: not a click-like event, no known response, or the shopper's hourly budget is
        spent). `mark_only`: only note the click (it is in the checkpoint already: replay after a restart).
        Checkpoints every [ranker].online_checkpoint_every updates."""
        with self._lock:
            if at is not None:
                self.position = max(self.position, at)
            if event not in POSITIVE or request_id is None:
                return 0
            shown = self._shown.get(request_id)
            if shown is None or shown.user_id != user_id:
                return 0
            i = position - shown.offset if position is not None else -1
            if not 0 <= i < len(shown.items) or shown.items[i] != item_id:
                i = shown.items.index(item_id) if item_id in shown.items else -1
            if i < 0 or i in shown.clicked:
                return 0
            found = examples(shown, i)
            shown.clicked.add(i)
            if mark_only:
                self._allowed(user_id, len(found), time.time() if now is None else now)
                return 0
            allowed = self._allowed(user_id, len(found), time.time() if now is None else now)
            self.skipped += len(found) - allowed
            for row, label in found[:allowed]:
                self._step(row, label)
            self._since_checkpoint += allowed
        if self.path is not None and self._since_checkpoint >= self.cfg.online_checkpoint_every:
            self.checkpoint()
        return allowed

    def replay(self, records: Iterable[tuple[Mapping[str, Any], Position]], learn_after: Position) -> int:
        """Catch up from the log: remember every response with features, learn from feedback after `learn_after`
        (what the checkpoint already holds is not learned twice). Returns the examples added."""
        added = 0
        for r, pos in records:
            if r.get("kind") == IMPRESSION and r.get("features"):
                self.remember(r["request_id"], r.get("user_id"), r.get("items") or [], int(r.get("offset") or 0),
                              features_of(r))
            elif r.get("kind") == FEEDBACK:
                added += self.learn(r["user_id"], r["item_id"], r["event"], r.get("request_id"), r.get("position"),
                                    now=float(r.get("ts", 0.0)), at=pos, mark_only=pos <= learn_after)
        return added

    # ----- durability -----

    def state(self) -> dict[str, Any]:
        return {"format": "vitrina-online/1", "base_version": self.base_version, "features": list(self.features),
                "z": self.z.tolist(), "n": self.n.tolist(), "updates": self.updates, "skipped": self.skipped,
                "position": [self.position.file, self.position.offset], "saved": time.time()}

    def checkpoint(self) -> None:
        """Write the state atomically and durably (temp file, fsync, rename, fsync of the folder)."""
        if self.path is None:
            return
        with self._lock:
            body = json.dumps(self.state())
            self._since_checkpoint = 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def restore(self) -> bool:
        """Load the checkpoint when it belongs to the same starting model; True when one was loaded."""
        if self.path is None or not self.path.is_file():
            return False
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("online ranker checkpoint %s unreadable (%s): starting from the model", self.path, e)
            return False
        if body.get("base_version") != self.base_version or body.get("features") != list(self.features):
            log.info("online ranker checkpoint is for another model: starting from the model")
            return False
        self.z, self.n = np.asarray(body["z"], dtype=np.float64), np.asarray(body["n"], dtype=np.float64)
        self._delta = -self.z / ((self.beta + np.sqrt(self.n)) / self.cfg.online_rate + self.cfg.online_l2)
        self.updates, self.skipped = int(body["updates"]), int(body.get("skipped", 0))
        self.position = Position(*body.get("position", ["", 0]))
        return True


_MODELS: dict[str, OnlineModel] = {}
_MODELS_LOCK = threading.Lock()


def start_model(cfg: RankerConfig) -> tuple[Logistic, tuple[str, ...], str]:
    """What the online model starts from: the logistic model [ranker].search_model names, else zero weights over
    the search features (which scores every candidate alike: the hand blend's order, until feedback moves it)."""
    from search.query.features import SEARCH_FEATURES
    from search.query.learned import load_model

    if cfg.search_model:
        model = load_model(cfg.search_model, "search")
        if model.logistic is not None:
            return model.logistic, model.features, model.version
        log.warning("[ranker].online needs a logistic start model; %s is %s: starting from zero weights",
                    cfg.search_model, model.kind)
    f = len(SEARCH_FEATURES)
    return Logistic(np.zeros(f), 0.0, np.zeros(f), np.ones(f)), SEARCH_FEATURES, "zero"


def online_model(service: SearchService, log_: ImpressionLog | None = None) -> OnlineModel:
    """The deployment's one online model (per data folder): restored from its checkpoint and caught up from the
    impression log on first use."""
    key = str(service.cfg.data_dir.resolve())
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            start, features, version = start_model(service.cfg.ranker)
            model = OnlineModel(start, features, service.cfg.ranker, service.cfg.data_dir / CHECKPOINT, version)
            model.restore()
            if log_ is None:
                from search.online.impressions import open_log

                log_ = open_log(service.cfg.data_dir)
            since = model.position
            names = [f.name for f in log_.files()]
            start = Position()  # the day before the checkpoint's: responses its later feedback may name
            if since.file in names:
                start = Position(names[max(0, names.index(since.file) - 1)], 0)
            added = model.replay(log_.read_from(start), since)
            if added:
                log.info("online ranker caught up %d examples from the impression log", added)
            _MODELS[key] = model
    return model


def forget_models() -> None:
    """Drop the in-memory models (tests; a restarted process starts from the checkpoint and the log)."""
    with _MODELS_LOCK:
        for model in _MODELS.values():
            model.checkpoint()
        _MODELS.clear()
