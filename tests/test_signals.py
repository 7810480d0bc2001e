"""Co-occurrence and popularity signals against a naive oracle: online, after a delete, and rebuilt from the log."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from search.shopper.personal import DAY_S, Event
from search.shopper.profiles import FILENAME, ProfileStore
from vitrina.config import PersonalConfig
from vitrina.errors import ConfigError

CFG = PersonalConfig()
T0 = 1_588_291_200.0
WEIGHT = {"view": CFG.view, "click": CFG.click, "cart": CFG.cart, "purchase": CFG.purchase}


def random_events(n: int, users: int, items: int, seed: int = 0) -> list[Event]:
    rnd = random.Random(seed)
    kinds = ["view", "click", "cart", "purchase"]
    return [Event(f"u{rnd.randrange(users)}", f"i{rnd.randrange(items)}", rnd.choice(kinds),
                  T0 + rnd.uniform(0, 90) * DAY_S) for _ in range(n)]


def oracle_cooc(events: list[Event], cooc_events: tuple[str, ...] = ("cart", "purchase")
                ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """n_i = shoppers who bought i; c_ij = shoppers who bought both i and j (i != j)."""
    bought: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.event in cooc_events:
            bought[e.user_id].add(e.item_id)
    buyers: dict[str, int] = defaultdict(int)
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    for items in bought.values():
        for i in items:
            buyers[i] += 1
            for j in items:
                if i != j:
                    pairs[(i, j)] += 1
    return dict(buyers), dict(pairs)


def oracle_popularity(events: list[Event], item: str, now: float) -> float:
    h = CFG.half_life_days * 86400.0
    return sum(WEIGHT[e.event] * 2.0 ** (-(now - e.ts) / h) for e in events if e.item_id == item)


def record_in_batches(store: ProfileStore, events: list[Event], seed: int = 1) -> None:
    rnd = random.Random(seed)
    vecs = {f"i{k}": np.eye(32, dtype=np.float32)[k % 32] for k in range(64)}
    start = 0
    while start < len(events):
        size = rnd.choice([1, 1, 2, 5, 17])
        store.record(events[start:start + size], vecs)
        start += size


def assert_signals_match(store: ProfileStore, events: list[Event]) -> None:
    dump = store.dump_signals()
    buyers, pairs = oracle_cooc(events)
    assert dump["buyers"] == buyers
    assert dump["cooc"] == pairs
    items = sorted({e.item_id for e in events})
    now = T0 + 100 * DAY_S
    pop = store.popularity(items, now=now)
    for item in items:
        assert pop[item] == pytest.approx(oracle_popularity(events, item, now), rel=1e-9)
    assert set(dump["popularity"]) == set(items)


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / FILENAME, CFG)


def test_cooccurrence_counts_match_the_oracle(store: ProfileStore) -> None:
    events = random_events(600, users=40, items=25)
    record_in_batches(store, events)
    assert_signals_match(store, events)


def test_rebuild_from_the_log_gives_the_same_signals(store: ProfileStore) -> None:
    events = random_events(500, users=30, items=20, seed=2)
    record_in_batches(store, events)
    online = store.dump_signals()
    stats = store.rebuild_signals()
    assert stats["events"] == 500
    rebuilt = store.dump_signals()
    assert rebuilt["cooc"] == online["cooc"] and rebuilt["buyers"] == online["buyers"]
    assert set(rebuilt["popularity"]) == set(online["popularity"])
    for item, (score, at) in online["popularity"].items():
        assert rebuilt["popularity"][item][0] == pytest.approx(score, rel=1e-9)
        assert rebuilt["popularity"][item][1] == at


def test_wiped_signals_come_back_from_the_log(store: ProfileStore) -> None:
    events = random_events(200, users=10, items=12, seed=3)
    record_in_batches(store, events)
    conn = store._conn()  # wipe the derived tables behind the store's back
    for table in ("popularity", "cooc", "item_buyers"):
        conn.execute(f"DELETE FROM {table}")
    assert store.dump_signals()["cooc"] == {}
    store.rebuild_signals()
    assert_signals_match(store, events)


def test_deleted_shopper_disappears_from_the_signals(store: ProfileStore) -> None:
    events = random_events(500, users=20, items=15, seed=4)
    record_in_batches(store, events)
    victim = "u3"
    assert any(e.user_id == victim and e.event in ("cart", "purchase") for e in events)
    assert store.delete(victim)
    remaining = [e for e in events if e.user_id != victim]
    assert_signals_match(store, remaining)
    after_delete = store.dump_signals()
    store.rebuild_signals()
    assert store.dump_signals()["cooc"] == after_delete["cooc"]


def test_neighbours_are_normalised_so_best_sellers_do_not_win(store: ProfileStore) -> None:
    vecs: dict[str, np.ndarray] = {}
    events = []
    for u in range(50):  # the best-seller: everyone buys it
        events.append(Event(f"u{u}", "bestseller", "purchase", T0 + u))
    for u in range(3):  # three shoppers buy the pair A + X
        events += [Event(f"u{u}", "A", "purchase", T0 + 100 + u), Event(f"u{u}", "X", "purchase", T0 + 200 + u)]
    store.record(events, vecs)
    top = store.neighbours("A", limit=5, shrink=0.0)
    assert [t[0] for t in top] == ["X", "bestseller"]
    assert top[0][1] == pytest.approx(3 / math.sqrt(3 * 3)) and top[0][2] == 3
    assert top[1][1] == pytest.approx(3 / math.sqrt(3 * 50)) and top[1][2] == 3
    shrunk = store.neighbours("A", limit=5, shrink=1.0)
    assert shrunk[0][1] == pytest.approx(3 / (3 + 1.0))
    assert store.neighbours("unknown") == []


def test_basket_cap_and_row_pruning_bound_the_signals(tmp_path: Path) -> None:
    cfg = PersonalConfig(cooc_basket=2, cooc_neighbours=2)
    s = ProfileStore(tmp_path / FILENAME, cfg)
    # one shopper buys a, b, c, d in order: d is paired only with the 2 most recent (b, c)
    s.record([Event("u", x, "purchase", T0 + k) for k, x in enumerate("abcd")], {})
    pairs = s.dump_signals()["cooc"]
    assert ("d", "a") not in pairs and pairs[("d", "b")] == 1 and pairs[("d", "c")] == 1
    # re-buying an item refreshes its recency but adds no pair
    s.record([Event("u", "a", "cart", T0 + 10), Event("u", "e", "purchase", T0 + 11)], {})
    pairs = s.dump_signals()["cooc"]
    assert pairs[("e", "a")] == 1 and pairs[("e", "d")] == 1 and ("e", "c") not in pairs
    assert s.dump_signals()["buyers"]["a"] == 1
    # a hub item bought alongside many others keeps at most 2 x cooc_neighbours rows
    for k in range(12):
        s.record([Event(f"v{k}", "hub", "purchase", T0), Event(f"v{k}", f"x{k}", "purchase", T0 + 1)], {})
        if k < 3:
            s.record([Event(f"w{k}", "hub", "purchase", T0), Event(f"w{k}", "x0", "purchase", T0 + 1)], {})
    hub_rows = [p for p in s.dump_signals()["cooc"] if p[0] == "hub"]
    assert len(hub_rows) <= 4
    assert s.neighbours("hub", limit=1, shrink=0.0)[0][0] == "x0"  # the most co-bought survives pruning


def test_views_and_clicks_do_not_make_pairs(store: ProfileStore) -> None:
    store.record([Event("u", "a", "view", T0), Event("u", "b", "click", T0 + 1), Event("u", "c", "cart", T0 + 2),
                  Event("u", "d", "purchase", T0 + 3)], {})
    dump = store.dump_signals()
    assert dump["cooc"] == {("c", "d"): 1, ("d", "c"): 1}
    assert set(dump["popularity"]) == {"a", "b", "c", "d"}


def test_popular_lists_items_best_first(store: ProfileStore) -> None:
    events = random_events(300, users=15, items=30, seed=5)
    record_in_batches(store, events)
    now = T0 + 120 * DAY_S
    got = list(store.popular(now=now, batch=7))  # several pages
    want = sorted(((i, oracle_popularity(events, i, now)) for i in {e.item_id for e in events}),
                  key=lambda t: -t[1])
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-9)


def test_bad_signal_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cooc_events"):
        ProfileStore(tmp_path / FILENAME, PersonalConfig(cooc_events=("like",)))


def test_neighbours_of_many_items_equal_one_at_a_time(store: ProfileStore) -> None:
    events = random_events(600, users=40, items=30, seed=5)
    record_in_batches(store, events)
    items = [f"i{k}" for k in range(30)] + ["never-bought", "i3"]
    many = store.neighbours_many(items, limit=7, shrink=0.5)
    one = {i: store.neighbours(i, limit=7, shrink=0.5) for i in items}
    assert {i: many.get(i, []) for i in items} == one
    assert "never-bought" not in many and sum(1 for v in many.values() if v) > 20
    assert all(len(v) <= 7 for v in many.values()) and store.neighbours_many([]) == {}
