"""Personalisation maths against a naive loop-and-formula oracle: decay, event order, blend, rerank."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from search.shopper.personal import (DAY_S, EVENTS, ITEM, PARTS, Event, UserState, affinity, affinity_weights,
                                     blend_weight, decay, event_weight, evidence_at, normalise_scores, parse_event,
                                     parse_ts, rerank, update_user, validate_event)
from vitrina.config import PersonalConfig
from vitrina.errors import BadInput, ConfigError

CFG = PersonalConfig()
T0 = 1_588_291_200.0  # 2020-05-01T00:00:00Z


# ----- the oracle: explicit formulas, python loops, no shared code -----

def oracle_weight(event: str, cfg: PersonalConfig) -> float:
    return {"view": cfg.view, "click": cfg.click, "cart": cfg.cart, "purchase": cfg.purchase}[event]


def oracle_state(events: list[tuple[str, str, float]], vectors: dict[str, list[float]],
                 cfg: PersonalConfig) -> tuple[list[float], float, float]:
    """sum_i w_i * 2^(-(T - t_i) / half_life) * unit(v_i) with T the newest event time."""
    newest = max(ts for _, _, ts in events)
    half_life = cfg.half_life_days * 86400.0
    dim = len(next(iter(vectors.values())))
    vec = [0.0] * dim
    evidence = 0.0
    for item, kind, ts in events:
        w = oracle_weight(kind, cfg)
        f = 2.0 ** (-(newest - ts) / half_life)
        norm = math.sqrt(sum(x * x for x in vectors[item]))
        for j in range(dim):
            vec[j] += w * f * vectors[item][j] / norm
        evidence += w * f
    return vec, evidence, newest


def oracle_rerank(scores: list[float], items: list[list[float]], user_vec: list[float] | None,
                  evidence: float, cfg: PersonalConfig, purchased: list[bool] | None = None,
                  popularity: list[float] | None = None) -> list[float]:
    lo, hi = min(scores), max(scores)
    rel = [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]
    a = 0.0
    if user_vec is not None and evidence > 0:
        a = cfg.blend_max * evidence / (evidence + cfg.blend_saturation)
    p = cfg.popularity_weight
    top = max(popularity) if popularity else 0.0
    out = []
    for i, item in enumerate(items):
        cos = 0.0
        if user_vec is not None:
            dot = sum(x * y for x, y in zip(user_vec, item))
            nu = math.sqrt(sum(x * x for x in user_vec))
            ni = math.sqrt(sum(x * x for x in item))
            cos = dot / (nu * ni)
        pop = popularity[i] / top if popularity and top > 0 else 0.0
        s = (1 - a) * (1 - p) * rel[i] + (1 - a) * p * pop + a * cos
        if purchased and purchased[i] and cfg.purchased == "demote":
            s = s - (1 - cfg.demote_factor) * abs(s)
        out.append(s)
    return out


def fold(events: list[tuple[str, str, float]], vectors: dict[str, np.ndarray], cfg: PersonalConfig) -> UserState:
    state = None
    for item, kind, ts in events:
        state = update_user(state, vectors[item], kind, ts, cfg)
    assert state is not None
    return state


@pytest.fixture
def vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"i{k}": rng.normal(size=8).astype(np.float32) for k in range(6)}


# ----- weights and decay -----

def test_event_weights_are_ordered_and_unknown_events_rejected() -> None:
    weights = [event_weight(e, CFG) for e in EVENTS]
    assert weights == sorted(weights) and len(set(weights)) == 4
    assert weights == [oracle_weight(e, CFG) for e in EVENTS]
    with pytest.raises(BadInput, match="unknown event"):
        event_weight("like", CFG)


def test_decay_half_life_is_exact() -> None:
    h = CFG.half_life_days * DAY_S
    assert decay(0, CFG) == 1.0
    assert decay(h, CFG) == pytest.approx(0.5, rel=1e-12)
    assert decay(3 * h, CFG) == pytest.approx(0.125, rel=1e-12)
    assert decay(-h, CFG) == 1.0  # the future does not grow
    assert decay(h, PersonalConfig(half_life_days=0)) == 1.0  # decay disabled


def test_one_half_life_halves_the_old_state(vectors: dict[str, np.ndarray]) -> None:
    h = CFG.half_life_days * DAY_S
    s1 = update_user(None, vectors["i0"], "click", T0, CFG)
    s2 = update_user(s1, vectors["i1"], "purchase", T0 + h, CFG)
    assert s2.evidence == pytest.approx(0.5 * CFG.click + CFG.purchase, rel=1e-9)
    u0 = vectors["i0"] / np.linalg.norm(vectors["i0"])
    u1 = vectors["i1"] / np.linalg.norm(vectors["i1"])
    np.testing.assert_allclose(s2.vector, 0.5 * CFG.click * u0 + CFG.purchase * u1, rtol=1e-5, atol=1e-6)
    assert s2.updated_at == T0 + h
    assert evidence_at(s2, T0 + 3 * h, CFG) == pytest.approx(s2.evidence * 0.25, rel=1e-9)
    assert evidence_at(s2, None, CFG) == s2.evidence
    assert s2.counts == {"click": 1, "purchase": 1}


def test_state_matches_oracle_in_every_arrival_order(vectors: dict[str, np.ndarray]) -> None:
    events = [("i0", "view", T0), ("i1", "click", T0 + 3 * DAY_S), ("i2", "cart", T0 + 10 * DAY_S),
              ("i0", "purchase", T0 + 45 * DAY_S), ("i3", "click", T0 + 45.5 * DAY_S)]
    lists = {k: v.astype(float).tolist() for k, v in vectors.items()}
    want_vec, want_ev, newest = oracle_state(events, lists, CFG)
    for order in itertools.permutations(events):
        state = fold(list(order), vectors, CFG)
        np.testing.assert_allclose(state.vector, want_vec, rtol=1e-5, atol=1e-6)
        assert state.evidence == pytest.approx(want_ev, rel=1e-9)
        assert state.updated_at == newest
        assert sum(state.counts.values()) == len(events)


def test_out_of_order_event_adds_with_its_own_decay(vectors: dict[str, np.ndarray]) -> None:
    h = CFG.half_life_days * DAY_S
    s1 = update_user(None, vectors["i0"], "purchase", T0 + 2 * h, CFG)
    s2 = update_user(s1, vectors["i1"], "click", T0, CFG)  # two half-lives older than the state
    assert s2.updated_at == T0 + 2 * h  # an old event never moves the clock back
    assert s2.evidence == pytest.approx(CFG.purchase + 0.25 * CFG.click, rel=1e-9)
    u0 = vectors["i0"] / np.linalg.norm(vectors["i0"])
    u1 = vectors["i1"] / np.linalg.norm(vectors["i1"])
    np.testing.assert_allclose(s2.vector, CFG.purchase * u0 + 0.25 * CFG.click * u1, rtol=1e-5, atol=1e-6)


def test_newer_events_weigh_more_than_older_ones(vectors: dict[str, np.ndarray]) -> None:
    old_a = fold([("i0", "click", T0), ("i1", "click", T0 + 60 * DAY_S)], vectors, CFG)
    u1 = vectors["i1"] / np.linalg.norm(vectors["i1"])
    u0 = vectors["i0"] / np.linalg.norm(vectors["i0"])
    assert float(old_a.vector @ u1) > float(old_a.vector @ u0)


# ----- blend -----

def test_blend_weight_is_monotonic_bounded_and_half_at_saturation() -> None:
    grid = [0.0, 1e-6, 0.1, 0.5, 1, 2, 5, 10, 50, 1e3, 1e6, 1e12]
    values = [blend_weight(e, CFG) for e in grid]
    assert values[0] == 0.0
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= CFG.blend_max for v in values)
    assert blend_weight(CFG.blend_saturation, CFG) == pytest.approx(CFG.blend_max / 2)
    assert values[-1] == pytest.approx(CFG.blend_max, rel=1e-6)
    assert blend_weight(-3.0, CFG) == 0.0 and blend_weight(float("nan"), CFG) == 0.0


# ----- rerank -----

def test_cold_start_keeps_relevance_order() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.01, 0.03, size=40)  # RRF-like scale
    items = rng.normal(size=(40, 8))
    final, parts = rerank(scores, items, None, CFG)
    assert list(np.argsort(-final, kind="stable")) == list(np.argsort(-scores, kind="stable"))
    np.testing.assert_allclose(final, normalise_scores(scores))
    assert not parts["personal"].any() and not parts["popularity"].any()


def test_relevance_normalisation_makes_score_scale_irrelevant(vectors: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(2)
    items = rng.normal(size=(20, 8))
    user = fold([("i0", "click", T0), ("i1", "cart", T0 + DAY_S)], vectors, CFG)
    rrf = rng.uniform(0.01, 0.03, size=20)
    cosine_scale = 10.0 * rrf + 0.3  # the same ranking on another scale
    f1, _ = rerank(rrf, items, user, CFG)
    f2, _ = rerank(cosine_scale, items, user, CFG)
    np.testing.assert_allclose(f1, f2, rtol=1e-9, atol=1e-12)


def test_rerank_matches_oracle_and_parts_sum_to_final(vectors: dict[str, np.ndarray]) -> None:
    rnd = random.Random(3)
    cfg = PersonalConfig(purchased="demote", demote_factor=0.4, popularity_weight=0.2)
    user = fold([("i0", "click", T0), ("i2", "purchase", T0 + 2 * DAY_S), ("i4", "view", T0 + 5 * DAY_S)],
                vectors, cfg)
    for trial in range(5):
        n = 15
        scores = [rnd.uniform(-2, 5) for _ in range(n)]
        items = [[rnd.gauss(0, 1) for _ in range(8)] for _ in range(n)]
        purchased = [rnd.random() < 0.3 for _ in range(n)]
        popularity = [rnd.uniform(0, 10) for _ in range(n)]
        final, parts = rerank(np.array(scores), np.array(items), user, cfg, np.array(purchased),
                              np.array(popularity))
        want = oracle_rerank(scores, items, user.vector.astype(float).tolist(), user.evidence, cfg, purchased,
                             popularity)
        np.testing.assert_allclose(final, want, rtol=1e-6, atol=1e-9)
        assert set(parts) == set(PARTS)
        np.testing.assert_allclose(sum(parts[k] for k in PARTS), final, rtol=1e-12, atol=1e-12)


def test_personal_rerank_moves_items_like_the_clicks_up() -> None:
    rng = np.random.default_rng(4)
    centre_a, centre_b = rng.normal(size=16), rng.normal(size=16)
    items = np.stack([(centre_a if i % 2 == 0 else centre_b) + 0.3 * rng.normal(size=16) for i in range(20)])
    scores = np.linspace(1.0, 0.9, 20)  # A and B interleaved; min-max spreads relevance over [0, 1]
    user = None
    for k, i in enumerate([0, 2, 4]):  # the shopper clicked three A items
        user = update_user(user, items[i], "click", T0 + k * DAY_S, CFG)
    final, parts = rerank(scores, items, user, CFG)
    a_items, b_items = range(0, 20, 2), range(1, 20, 2)
    assert min(parts["personal"][i] for i in a_items) > max(parts["personal"][j] for j in b_items)
    order = [int(i) for i in np.argsort(-final)]
    assert order[0] % 2 == 0
    assert sum(i % 2 == 0 for i in order[:10]) >= 7  # 5 of the top 10 before the rerank
    base_rank = {int(i): r for r, i in enumerate(np.argsort(-scores))}
    new_rank = {i: r for r, i in enumerate(order)}
    assert all(new_rank[i] <= base_rank[i] for i in a_items)  # items like the clicks only move up
    assert all(new_rank[j] >= base_rank[j] for j in b_items)


def test_new_item_with_no_feedback_is_not_buried() -> None:
    rng = np.random.default_rng(5)
    items = rng.normal(size=(10, 8))
    items[9] = items[0] * 1.0  # item 9 is brand new: same content as the clicked item 0, no feedback at all
    user = update_user(None, items[0], "click", T0, CFG)
    user = update_user(user, items[0], "purchase", T0 + DAY_S, CFG)
    scores = np.linspace(1.0, 0.1, 10)
    scores[0], scores[9] = 0.5, 1.05  # the clicked item is mid-list; the new one is the most relevant
    popularity = np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])  # item 9 has never been seen by anyone
    cfg = PersonalConfig(popularity_weight=0.2)
    final, parts = rerank(scores, items, user, cfg, popularity=popularity)
    assert parts["personal"][9] == pytest.approx(parts["personal"][0])  # personal part ignores feedback counts
    assert int(np.argmax(final)) == 9


def test_purchased_items_are_demoted_only_when_configured(vectors: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(6)
    items = rng.normal(size=(6, 8))
    scores = np.array([6.0, 5, 4, 3, 2, 1])
    user = update_user(None, items[0], "purchase", T0, CFG)
    bought = np.array([True, False, False, False, False, False])
    keep, _ = rerank(scores, items, user, CFG, purchased=bought)
    plain, _ = rerank(scores, items, user, CFG)
    np.testing.assert_allclose(keep, plain)
    demote_cfg = PersonalConfig(purchased="demote", demote_factor=0.5)
    demoted, parts = rerank(scores, items, user, demote_cfg, purchased=bought)
    assert demoted[0] == pytest.approx(0.5 * plain[0])
    assert parts["demotion"][0] < 0 and not parts["demotion"][1:].any()
    np.testing.assert_allclose(demoted[1:], plain[1:])


def test_rerank_edge_cases() -> None:
    final, parts = rerank(np.zeros(0), np.zeros((0, 4)), None, CFG)
    assert final.shape == (0,) and all(p.shape == (0,) for p in parts.values())
    final, _ = rerank(np.array([0.5, 0.5, 0.5]), np.ones((3, 4)), None, CFG)
    np.testing.assert_allclose(final, [1.0, 1.0, 1.0])  # all tied: all tied
    with pytest.raises(BadInput):
        rerank(np.array([1.0, 2.0]), np.ones((3, 4)), None, CFG)
    zero_user = UserState(vector=np.zeros(4, dtype=np.float32), evidence=3.0, updated_at=T0)
    final, parts = rerank(np.array([1.0, 2.0]), np.ones((2, 4)), zero_user, CFG)
    assert not parts["personal"].any()


def test_evidence_decays_to_now_in_rerank() -> None:
    items = np.eye(4)
    user = update_user(None, items[0], "purchase", T0, CFG)
    scores = np.array([0.0, 1.0, 0.5, 0.2])
    _, fresh = rerank(scores, items, user, CFG, now=T0)
    _, stale = rerank(scores, items, user, CFG, now=T0 + 10 * CFG.half_life_days * DAY_S)
    assert stale["personal"][0] < fresh["personal"][0] / 100


# ----- validation -----

def test_parse_event_and_validation() -> None:
    e = parse_event({"user_id": "u1", "item_id": "0108775015", "event": "click", "ts": "2020-05-01T00:00:00Z"})
    assert e == Event("u1", "0108775015", "click", T0)
    assert parse_ts("2020-05-01T02:00:00+02:00") == T0
    assert parse_ts("2020-05-01") == T0  # naive = UTC
    assert parse_ts(None, now=T0) == T0
    for bad, message in [({"user_id": "", "item_id": "x", "event": "click"}, "user_id"),
                         ({"user_id": "u", "item_id": None, "event": "click"}, "item_id"),
                         ({"user_id": "u", "item_id": "x", "event": "like"}, "unknown event"),
                         ({"user_id": "u", "item_id": "x", "event": "view", "ts": "yesterday"}, "bad ts"),
                         ({"user_id": "u", "item_id": "x", "event": "view", "ts": float("nan")}, "bad ts"),
                         ({"user_id": "u", "item_id": "x", "event": "view", "ts": -5}, "bad ts"),
                         ({"user_id": "u", "item_id": "x", "event": "view", "ts": 4e12}, "bad ts"),
                         ({"user_id": "u", "item_id": "x", "event": "view", "extra": 1}, "unknown event field"),
                         ({"user_id": "u\n", "item_id": "x", "event": "view"}, "control")]:
        with pytest.raises(BadInput, match=message):
            parse_event(bad)
    with pytest.raises(BadInput, match="unknown event"):
        validate_event(Event("u", "x", "buy", T0))
    with pytest.raises(BadInput, match="bad ts"):
        validate_event(Event("u", "x", "view", "2020"))  # type: ignore[arg-type]


def test_rerank_with_cosines_from_the_store_equals_rerank_with_vectors() -> None:
    rng = np.random.default_rng(3)
    items = rng.standard_normal((6, 4))
    user = update_user(None, items[2], "purchase", T0, CFG)
    scores = rng.random(6)
    want, want_parts = rerank(scores, items, user, CFG, now=T0)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    given = unit @ (user.vector / np.linalg.norm(user.vector))
    got, parts = rerank(scores, None, user, CFG, now=T0, item_cosines=given)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(parts["personal"], want_parts["personal"], rtol=1e-6)
    with pytest.raises(BadInput):
        rerank(scores, None, user, CFG, item_cosines=given[:3])
    with pytest.raises(BadInput):
        rerank(scores, None, user, CFG)


# ----- affinity: shares of the shopper's bought items with the candidate's values -----

def oracle_affinity(cands: list[tuple[str, dict[str, str]]], hist: list[tuple[str, dict[str, str]]],
                    weights: dict[str, float]) -> list[float]:
    out = []
    for cid, cp in cands:
        s = 0.0
        for f, w in weights.items():
            if f == "item":
                s += w * (1.0 if any(hid == cid for hid, _ in hist) else 0.0)
                continue
            value = cp.get(f, "")
            same = sum(1 for _, hp in hist if value != "" and hp.get(f, "") == value)
            s += w * same / len(hist) if hist else 0.0
        out.append(s)
    return out


def test_affinity_matches_oracle() -> None:
    rnd = random.Random(11)
    weights = {ITEM: 0.5, "code": 0.6, "dept": 0.4, "colour": 0.1}
    for trial in range(20):
        def row() -> dict[str, str]:
            return {f: rnd.choice(["", "a", "b", "c"]) for f in ("code", "dept", "colour") if rnd.random() < 0.9}
        cands = [(f"i{rnd.randrange(12)}", row()) for _ in range(rnd.randrange(0, 15))]
        hist = [(f"i{rnd.randrange(12)}", row()) for _ in range(rnd.randrange(0, 8))]
        got = affinity([c for c, _ in cands], [p for _, p in cands], [h for h, _ in hist], [p for _, p in hist],
                       weights)
        np.testing.assert_allclose(got, oracle_affinity(cands, hist, weights), rtol=1e-12, atol=1e-12)


def test_affinity_edge_cases_and_config() -> None:
    assert affinity(["a"], [{"f": "x"}], [], [], {"f": 1.0}).tolist() == [0.0]  # no history: nothing
    # the same value bought twice out of three counts 2/3; an empty value never matches
    got = affinity(["a", "b"], [{"f": "x"}, {"f": ""}], ["h1", "h2", "h3"], [{"f": "x"}, {"f": "x"}, {"f": ""}],
                   {"f": 1.0})
    np.testing.assert_allclose(got, [2 / 3, 0.0])
    with pytest.raises(BadInput):
        affinity(["a"], [], ["h"], [{}], {"f": 1.0})
    cfg = PersonalConfig(affinity=("item=0.5", " product_code = 0.6"))
    assert affinity_weights(cfg) == {"item": 0.5, "product_code": 0.6}
    assert affinity_weights(PersonalConfig()) == {}
    for bad in ("item", "=1", "x=abc", "x=nan"):
        with pytest.raises(ConfigError):
            affinity_weights(PersonalConfig(affinity=(bad,)))


def test_rerank_adds_affinity_for_a_user_only(vectors: dict[str, np.ndarray]) -> None:
    cfg = PersonalConfig(blend_max=0.2, blend_saturation=1.0)
    user = fold([("i0", "purchase", T0)], vectors, cfg)
    rnd = random.Random(5)
    n = 12
    scores = [rnd.uniform(0, 3) for _ in range(n)]
    items = [[rnd.gauss(0, 1) for _ in range(8)] for _ in range(n)]
    aff = [rnd.choice([0.0, 0.0, 0.3, 1.1]) for _ in range(n)]
    final, parts = rerank(np.array(scores), np.array(items), user, cfg, affinity=np.array(aff))
    want = oracle_rerank(scores, items, user.vector.astype(float).tolist(), user.evidence, cfg)
    lo, hi = min(scores), max(scores)
    a = cfg.blend_max * user.evidence / (user.evidence + cfg.blend_saturation)
    boost = [(1 - a) * (s - lo) / (hi - lo) * f for s, f in zip(scores, aff)]  # relevance part x affinity
    np.testing.assert_allclose(final, np.array(want) + np.array(boost), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(parts["affinity"], boost, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(parts["affinity"], parts["relevance"] * np.array(aff), rtol=1e-12)
    np.testing.assert_allclose(sum(parts[k] for k in PARTS), final, rtol=1e-12, atol=1e-12)
    cold, cold_parts = rerank(np.array(scores), np.array(items), None, cfg, affinity=np.array(aff))
    assert not cold_parts["affinity"].any()
    assert list(np.argsort(-cold, kind="stable")) == list(np.argsort(-np.array(scores), kind="stable"))
    with pytest.raises(BadInput):
        rerank(np.array(scores), np.array(items), user, cfg, affinity=np.zeros(n - 1))
