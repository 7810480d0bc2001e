"""Personal search's lookups in the index: feedback in, a shopper's own candidates, their cosines, affinity."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from search.query.request import FeedbackEvent
from search.store.interface import DenseQuery, Filters, Hit, Store
from vitrina.errors import BadInput, NotFound

if TYPE_CHECKING:
    from search.shopper.personal import UserState
    from search.shopper.profiles import ProfileStore

log = logging.getLogger(__name__)


def _unit(user: UserState) -> np.ndarray | None:
    """The user vector scaled to length 1, or None when it has no direction."""
    from search.shopper.personal import unit

    v = unit(user.vector)
    return v if v.any() else None


def personal_list(store: Store, alias: str, n: int, user: UserState | None, named: Mapping[str, set[str]],
                  filters: Filters | None) -> list[Hit]:
    """The shopper's own candidates for a text query: the n items nearest to the user vector among those with
    the attribute values the query names (and the request's filters); [] for no shopper, a query naming no
    attribute value, or a profile that does not fit the index."""
    if user is None or n <= 0 or not named:
        return []
    unit = _unit(user)
    if unit is None:
        return []
    base = filters or Filters()
    equals = {f: tuple(sorted(v)) for f, v in named.items()}
    equals.update(base.equals)  # a field the request filters on keeps the request's values
    f = Filters(equals=equals, ranges=base.ranges, exclude_ids=base.exclude_ids, only_ids=base.only_ids)
    try:
        return store.query(alias, DenseQuery(unit, "fused"), f, limit=n)
    except BadInput as e:  # e.g. a profile built with another model's dimension
        log.info("profile does not fit the index (%s): no personal candidates", e)
        return []


def user_cosines(store: Store, alias: str, user: UserState, ids: Sequence[str],
                 known: Mapping[str, float] | None = None) -> np.ndarray | None:
    """cosine(user vector, each candidate's fused vector), scored by the store over just these ids (no vectors
    travel to Python) except those `known` already; None when the profile does not fit the index (another
    model: cold start)."""
    unit = _unit(user)
    if unit is None:
        return np.zeros(len(ids))
    score = dict(known or {})
    ask = tuple(i for i in ids if i not in score)
    try:
        hits = store.query(alias, DenseQuery(unit, "fused"), Filters(only_ids=ask), limit=len(ask),
                           with_payload=False) if ask else []
    except BadInput as e:  # e.g. a profile built with another model's dimension
        log.info("profile does not fit the index (%s): treated as cold start", e)
        return None
    score.update((h.id, h.score) for h in hits)
    return np.array([score.get(i, 0.0) for i in ids], dtype=np.float64)


def affinity_to(store: Store, alias: str, hits: Sequence[Hit], history: Sequence[str],
                weights: Mapping[str, float], known: Mapping[str, Hit] | None = None) -> np.ndarray | None:
    """search.shopper.personal.affinity of the candidates to the shopper's bought items (their payloads taken from
    `known` or read from the store; items no longer in the index are left out); None without history."""
    from search.shopper.personal import ITEM, affinity

    if not history:
        return None
    if any(f != ITEM for f in weights):
        have = known or {}
        missing = [i for i in history if i not in have]
        read = {h.id: h for h in store.retrieve(alias, missing)} if missing else {}
        past = [h for h in (have.get(i) or read.get(i) for i in history) if h is not None]
    else:
        past = [Hit(i, 0.0, {}) for i in history]
    return affinity([h.id for h in hits], [h.payload for h in hits], [h.id for h in past],
                    [h.payload for h in past], weights)


def record_events(store: Store, alias: str, profiles: ProfileStore, events: Sequence[FeedbackEvent]) -> int:
    """Store feedback events, each item's fused vector looked up in the index; NotFound names unknown items
    (and nothing is stored)."""
    from search.shopper.personal import Event

    ids = list(dict.fromkeys(e.item_id for e in events))
    hits = store.retrieve(alias, ids, with_vectors=("fused",))  # the one named vector a profile folds in
    vectors = {h.id: h.vectors["fused"] for h in hits if h.vectors.get("fused") is not None}
    missing = [i for i, e in enumerate(events) if e.item_id not in vectors]
    if missing:
        where = ", ".join(f"event {i} ({events[i].item_id!r})" for i in missing[:10])
        raise NotFound("unknown item id in feedback", f"not in the index: {where}"
                       + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return profiles.record([Event(e.user_id, e.item_id, e.event, e.ts) for e in events], vectors)
