"""Personalisation maths: decayed user vectors from feedback events, blend weight, and the personal rerank."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

from vitrina.config import PersonalConfig
from vitrina.errors import BadInput, ConfigError

EVENTS = ("view", "click", "cart", "purchase")
DAY_S = 86_400.0
MAX_ID_CHARS = 256
MAX_FUTURE_S = DAY_S  # clock skew tolerated on event times
# The additive parts `rerank` returns; they sum to the final score.
PARTS = ("relevance", "personal", "affinity", "popularity", "demotion")
ITEM = "item"  # affinity key that stands for the item itself (buy again) rather than a payload field


@dataclass(frozen=True)
class Event:
    """One feedback event; `ts` is epoch seconds UTC."""

    user_id: str
    item_id: str
    event: str
    ts: float


@dataclass(frozen=True)
class UserState:
    """A shopper's decayed taste vector (as of `updated_at`) and the decayed event weight behind it."""

    vector: np.ndarray  # float32, fused item space; not normalised (its norm carries no meaning)
    evidence: float  # decayed sum of event weights, as of updated_at
    updated_at: float  # epoch seconds of the newest event folded in
    counts: dict[str, int] = field(default_factory=dict)  # raw (undecayed) events per type


def event_weight(event: str, cfg: PersonalConfig) -> float:
    """The configured weight of one event type (view < click < cart < purchase by default)."""
    if event not in EVENTS:
        raise BadInput(f"unknown event {event!r}", f"expected one of {', '.join(EVENTS)}")
    return float(getattr(cfg, event))


def decay(dt_s: float, cfg: PersonalConfig) -> float:
    """Weight left after `dt_s` seconds with the configured half-life: 0.5 ** (dt / half_life).

    A half-life <= 0 disables decay; a negative dt (the future) is treated as 0.
    """
    if cfg.half_life_days <= 0 or dt_s <= 0:
        return 1.0
    return 0.5 ** (dt_s / (cfg.half_life_days * DAY_S))


def unit(vector: np.ndarray) -> np.ndarray:
    """float32 vector scaled to length 1; zeros when it has no direction (zero or non-finite norm)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 and math.isfinite(norm) else np.zeros_like(v)


def update_user(state: UserState | None, item_vector: np.ndarray, event: str, ts: float,
                cfg: PersonalConfig) -> UserState:
    """Fold one event into the user's state: vector = decayed vector + weight * unit(item_vector).

    The state always stands for sum_i w_i * 0.5 ** ((updated_at - t_i) / half_life) * v_i, so the result
    does not depend on the order events arrive in: a newer event first decays the state to its own time,
    an older one (ts < updated_at) is added with its own decay. A state whose dimension differs from the
    item vector's (the catalogue was reindexed with another model) restarts from this event.
    """
    w = event_weight(event, cfg)
    v = unit(item_vector)
    if state is None or state.vector.shape != v.shape:
        counts = dict(state.counts) if state is not None else {}
        counts[event] = counts.get(event, 0) + 1
        return UserState(vector=(w * v).astype(np.float32), evidence=w, updated_at=float(ts), counts=counts)
    counts = dict(state.counts)
    counts[event] = counts.get(event, 0) + 1
    if ts >= state.updated_at:
        d = decay(ts - state.updated_at, cfg)
        vector = state.vector * np.float32(d) + np.float32(w) * v
        return UserState(vector=vector.astype(np.float32), evidence=state.evidence * d + w,
                         updated_at=float(ts), counts=counts)
    d = decay(state.updated_at - ts, cfg)
    vector = state.vector + np.float32(w * d) * v
    return UserState(vector=vector.astype(np.float32), evidence=state.evidence + w * d,
                     updated_at=state.updated_at, counts=counts)


def evidence_at(state: UserState, now: float | None, cfg: PersonalConfig) -> float:
    """The state's evidence decayed to `now` (None = as of its last event)."""
    if now is None:
        return state.evidence
    return state.evidence * decay(now - state.updated_at, cfg)


def blend_weight(evidence: float, cfg: PersonalConfig) -> float:
    """Weight of the personal score: blend_max * e / (e + blend_saturation); 0 without evidence.

    Grows monotonically with evidence, is half of blend_max at e = blend_saturation, never exceeds blend_max.
    """
    if not evidence > 0 or cfg.blend_max <= 0:
        return 0.0
    if cfg.blend_saturation <= 0 or math.isinf(evidence):
        return float(cfg.blend_max)
    return float(cfg.blend_max * evidence / (evidence + cfg.blend_saturation))


def normalise_scores(scores: np.ndarray) -> np.ndarray:
    """Min-max over the candidate list to [0, 1] (all equal -> all 1), so any engine scale blends alike.

    RRF scores (~0.01-0.03), BM25 and cosines all become "1 = best candidate, 0 = worst candidate";
    the order is unchanged. Non-finite scores count as the worst.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        return s
    finite = np.isfinite(s)
    if not finite.any():
        return np.ones_like(s)
    lo, hi = float(s[finite].min()), float(s[finite].max())
    out = np.where(finite, s, lo)
    if hi - lo <= 0:
        return np.ones_like(s)
    return (out - lo) / (hi - lo)


def cosines(user_vector: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Cosine of the user vector with each row of item_vectors (0 where either is all zeros)."""
    items = np.asarray(item_vectors, dtype=np.float64)
    if items.ndim != 2:
        raise BadInput(f"item vectors must be a 2-d array, got shape {items.shape}")
    u = np.asarray(user_vector, dtype=np.float64).reshape(-1)
    if items.shape[0] == 0:
        return np.zeros(0)
    if items.shape[1] != u.shape[0]:
        raise BadInput(f"user vector has {u.shape[0]} dims, items have {items.shape[1]}")
    un = float(np.linalg.norm(u))
    norms = np.linalg.norm(items, axis=1)
    if un == 0:
        return np.zeros(items.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = items @ u / (norms * un)
    return np.where(norms > 0, cos, 0.0)


def affinity_weights(cfg: PersonalConfig) -> dict[str, float]:
    """[personal].affinity ("field=weight" entries; field `item` = the item itself) as {field: weight}."""
    out: dict[str, float] = {}
    for entry in cfg.affinity:
        name, sep, value = str(entry).partition("=")
        try:
            weight = float(value)
        except ValueError as e:
            raise ConfigError(f"[personal].affinity entry {entry!r} is not field=weight") from e
        if not sep or not name.strip() or not math.isfinite(weight):
            raise ConfigError(f"[personal].affinity entry {entry!r} is not field=weight")
        out[name.strip()] = weight
    return out


def affinity(candidates: Sequence[str], candidate_payloads: Sequence[Mapping[str, Any]], history: Sequence[str],
             history_payloads: Sequence[Mapping[str, Any]], weights: Mapping[str, float]) -> np.ndarray:
    """How much each candidate shares with the shopper's history, field by field.

    affinity_i = sum_f weights[f] * (# history items with the candidate's non-empty value of f) / len(history);
    f = ITEM instead adds weights[ITEM] when the candidate itself is in the history (buy again). 0 without history.
    """
    n = len(candidates)
    if len(candidate_payloads) != n or len(history_payloads) != len(history):
        raise BadInput("affinity needs one payload per id")
    out = np.zeros(n)
    if not history or not n:
        return out
    for f, w in weights.items():
        if w == 0:
            continue
        if f == ITEM:
            bought = set(history)
            out += w * np.array([c in bought for c in candidates], dtype=np.float64)
            continue
        counts: dict[str, int] = {}
        for p in history_payloads:
            v = p.get(f)
            if v is not None and v != "":
                counts[str(v)] = counts.get(str(v), 0) + 1
        values = [counts.get(str(p.get(f)), 0) if p.get(f) not in (None, "") else 0 for p in candidate_payloads]
        out += w * np.asarray(values, dtype=np.float64) / len(history)
    return out


def rerank(query_scores: np.ndarray, item_vectors: np.ndarray | None, user: UserState | None, cfg: PersonalConfig,
           purchased: np.ndarray | None = None, popularity: np.ndarray | None = None, now: float | None = None,
           item_cosines: np.ndarray | None = None, affinity: np.ndarray | None = None
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Blend relevance with the shopper's taste over one candidate list; returns (final, parts).

    With a = blend_weight(user evidence decayed to `now`) and p = cfg.popularity_weight:
      relevance  = (1 - a) * (1 - p) * minmax(query_scores)            (see normalise_scores)
      popularity = (1 - a) * p * popularity / max(popularity)           (0 when no popularity is given)
      personal   = a * cosine(user.vector, item_vector)
      affinity   = relevance * the given affinity (see `affinity`) when there is a user, else 0: the shopper's
                   usual values scale up what the query asks for and never lift an item the query does not match
      demotion   = -(1 - demote_factor) * |pre-demotion score| for purchased items when purchased == "demote"
      final      = relevance + popularity + personal + affinity + demotion   (the parts sum to final)
    Only the given candidates are re-ordered, so a new item with no feedback competes on its relevance
    and its content similarity, never on a feedback count. No user (cold start) and p = 0 keeps the
    relevance order unchanged. `item_cosines`, when given, are cosine(user.vector, item) already computed
    (e.g. by the vector store) and item_vectors is not read.
    """
    rel = normalise_scores(query_scores)
    n = rel.shape[0]
    items = None if item_vectors is None else np.asarray(item_vectors, dtype=np.float64)
    if items is not None and n and (items.ndim != 2 or items.shape[0] != n):
        raise BadInput(f"expected {n} item vectors, got an array of shape {items.shape}")
    given = None if item_cosines is None else np.asarray(item_cosines, dtype=np.float64).reshape(-1)
    if given is not None and given.shape[0] != n:
        raise BadInput(f"expected {n} item cosines, got {given.shape[0]}")
    if given is None and items is None and user is not None:
        raise BadInput("rerank needs item_vectors or item_cosines for a user")
    a = 0.0
    cos = np.zeros(n)
    if user is not None and n:
        cos = given if given is not None else cosines(user.vector, items)
        a = blend_weight(evidence_at(user, now, cfg), cfg) if np.any(user.vector) else 0.0
    p = min(max(float(cfg.popularity_weight), 0.0), 1.0)
    pop = np.zeros(n)
    if popularity is not None and n:
        raw = np.nan_to_num(np.asarray(popularity, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0)
        if raw.shape[0] != n:
            raise BadInput(f"expected {n} popularity values, got {raw.shape[0]}")
        top = float(raw.max())
        pop = np.clip(raw, 0.0, None) / top if top > 0 else np.zeros(n)
    aff = np.zeros(n)
    if affinity is not None and user is not None and n:
        aff = np.nan_to_num(np.asarray(affinity, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
        if aff.shape[0] != n:
            raise BadInput(f"expected {n} affinity values, got {aff.shape[0]}")
    parts = {
        "relevance": (1.0 - a) * (1.0 - p) * rel,
        "personal": a * cos,
        "popularity": (1.0 - a) * p * pop,
    }
    parts["affinity"] = parts["relevance"] * aff
    pre = parts["relevance"] + parts["personal"] + parts["affinity"] + parts["popularity"]
    demotion = np.zeros(n)
    if purchased is not None and cfg.purchased == "demote" and n:
        mask = np.asarray(purchased, dtype=bool).reshape(-1)
        if mask.shape[0] != n:
            raise BadInput(f"expected {n} purchased flags, got {mask.shape[0]}")
        demotion = np.where(mask, -(1.0 - cfg.demote_factor) * np.abs(pre), 0.0)
    parts["demotion"] = demotion
    return pre + demotion, parts


def parse_ts(value: Any, now: float | None = None) -> float:
    """Event time from ISO-8601 text (naive = UTC), epoch seconds, or None (= now); BadInput otherwise."""
    now = time.time() if now is None else now
    if value is None or value == "":
        return float(now)
    if isinstance(value, bool):
        raise BadInput(f"bad ts {value!r}", "expected ISO-8601 text or epoch seconds")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as e:
            raise BadInput(f"bad ts {value!r}", "expected ISO-8601 text, e.g. 2020-05-01T12:00:00Z") from e
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ts = parsed.timestamp()
    else:
        raise BadInput(f"bad ts {value!r}", "expected ISO-8601 text or epoch seconds")
    if not math.isfinite(ts) or ts < 0:
        raise BadInput(f"bad ts {value!r}", "the time must be finite and not before 1970")
    if ts > now + MAX_FUTURE_S:
        raise BadInput(f"bad ts {value!r}", "the time is more than a day in the future")
    return ts


def _check_id(value: Any, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise BadInput(f"{name} is longer than {MAX_ID_CHARS} characters")
    if any(ord(c) < 32 for c in value):
        raise BadInput(f"{name} contains control characters")
    return value


def validate_event(event: Event, now: float | None = None) -> Event:
    """The event itself when its ids, type and time are valid; BadInput with a clear message otherwise."""
    _check_id(event.user_id, "user_id")
    _check_id(event.item_id, "item_id")
    if event.event not in EVENTS:
        raise BadInput(f"unknown event {event.event!r}", f"expected one of {', '.join(EVENTS)}")
    if isinstance(event.ts, bool) or not isinstance(event.ts, (int, float)):
        raise BadInput(f"bad ts {event.ts!r}", "expected epoch seconds")
    parse_ts(float(event.ts), now)
    return event


def parse_event(obj: Mapping[str, Any], now: float | None = None) -> Event:
    """An Event from a JSON object {"user_id", "item_id", "event", "ts"?}; BadInput on anything wrong."""
    if not isinstance(obj, Mapping):
        raise BadInput("each event must be a JSON object", f"got {type(obj).__name__}")
    unknown = set(obj) - {"user_id", "item_id", "event", "ts"}
    if unknown:
        raise BadInput(f"unknown event field(s) {sorted(unknown)}", "expected user_id, item_id, event, ts")
    user_id = _check_id(obj.get("user_id"), "user_id")
    item_id = _check_id(obj.get("item_id"), "item_id")
    kind = obj.get("event")
    if kind not in EVENTS:
        raise BadInput(f"unknown event {kind!r}", f"expected one of {', '.join(EVENTS)}")
    return Event(user_id=user_id, item_id=item_id, event=str(kind), ts=parse_ts(obj.get("ts"), now))
