"""ProfileStore on real SQLite: profiles match the maths, concurrent writers lose nothing, delete forgets."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from search.shopper.personal import DAY_S, Event, update_user
from search.shopper.profiles import FILENAME, ProfileStore, open_profiles
from vitrina.config import PersonalConfig
from vitrina.errors import BadInput

CFG = PersonalConfig()
T0 = 1_588_291_200.0  # 2020-05-01T00:00:00Z
DIM = 8
WEIGHT = {"view": CFG.view, "click": CFG.click, "cart": CFG.cart, "purchase": CFG.purchase}


def item_vectors(n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"item{k}": rng.normal(size=DIM).astype(np.float32) for k in range(n)}


def oracle_evidence(events: list[Event], at: float) -> float:
    """Decayed sum of event weights at time `at`, by the formula."""
    h = CFG.half_life_days * 86400.0
    return sum(WEIGHT[e.event] * 2.0 ** (-(at - e.ts) / h) for e in events)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProfileStore]:
    s = ProfileStore(tmp_path / FILENAME, CFG)
    yield s
    s.close()


def test_record_folds_events_like_the_maths(store: ProfileStore) -> None:
    vecs = item_vectors()
    events = [Event("u1", "item0", "view", T0), Event("u1", "item1", "click", T0 + DAY_S),
              Event("u1", "item2", "purchase", T0 + 40 * DAY_S), Event("u1", "item3", "cart", T0 + 2 * DAY_S)]
    assert store.record(events[:2], vecs) == 2
    assert store.record(events[2:], vecs) == 2
    want = None
    for e in events:
        want = update_user(want, vecs[e.item_id], e.event, e.ts, CFG)
    got = store.get("u1")
    assert got is not None and want is not None
    np.testing.assert_allclose(got.vector, want.vector, rtol=1e-6)
    assert got.evidence == pytest.approx(oracle_evidence(events, T0 + 40 * DAY_S), rel=1e-9)
    assert got.updated_at == T0 + 40 * DAY_S
    assert got.counts == {"view": 1, "click": 1, "purchase": 1, "cart": 1}
    prof = store.profile("u1")
    assert prof is not None
    assert prof["counts"] == {"view": 1, "click": 1, "cart": 1, "purchase": 1} and prof["events"] == 4
    assert prof["first_event"] == "2020-05-01T00:00:00Z" and prof["last_event"] == "2020-06-10T00:00:00Z"
    assert store.get("nobody") is None and store.profile("nobody") is None


def test_store_persists_across_reopen(tmp_path: Path) -> None:
    vecs = item_vectors()
    first = ProfileStore(tmp_path, CFG)  # a folder means <folder>/profiles.sqlite3
    first.record([Event("u", "item4", "cart", T0)], vecs)
    first.close()
    again = ProfileStore(tmp_path / FILENAME, CFG)
    state = again.get("u")
    assert state is not None and state.counts == {"cart": 1}
    np.testing.assert_allclose(state.vector, CFG.cart * vecs["item4"] / np.linalg.norm(vecs["item4"]), rtol=1e-6)
    journal = sqlite3.connect(str(tmp_path / FILENAME)).execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_open_profiles_uses_the_data_dir(cfg) -> None:  # noqa: ANN001 - the shared fixture
    s = open_profiles(cfg)
    assert s.path == cfg.data_dir / FILENAME and s.path.exists()


def test_eight_threads_lose_no_update(store: ProfileStore) -> None:
    vecs = item_vectors()
    kinds = ("view", "click", "cart", "purchase")
    users = ("a", "b", "c")  # shared by every thread: maximal read-modify-write contention
    per_thread = 500
    all_events: list[Event] = []
    plans = []
    for t in range(8):
        plan = [Event(users[(t + i) % 3], f"item{(t * 7 + i) % 10}", kinds[(t + i) % 4],
                      T0 + (t * per_thread + i) * 60.0) for i in range(per_thread)]
        plans.append(plan)
        all_events += plan
    errors: list[BaseException] = []

    def work(plan: list[Event]) -> None:
        try:
            for i, e in enumerate(plan):
                store.record([e], vecs) if i % 5 else store.record([e], {})  # some events have no vector
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count_events() == 8 * per_thread
    assert sum(1 for _ in store.events()) == 8 * per_thread  # pages past one batch of the log
    for u in users:
        mine = [e for e in all_events if e.user_id == u]
        prof = store.profile(u)
        assert prof is not None
        assert prof["events"] == len(mine)
        for k in kinds:
            assert prof["counts"][k] == sum(e.event == k for e in mine)
        state = store.get(u)
        assert state is not None
        with_vec = [e for i, e in enumerate(all_events) if e.user_id == u and (i % per_thread) % 5]
        assert state.evidence == pytest.approx(oracle_evidence(with_vec, state.updated_at), rel=1e-6)
    pop = store.popularity([f"item{k}" for k in range(10)], now=T0 + 10 * DAY_S)
    for k in range(10):
        mine = [e for e in all_events if e.item_id == f"item{k}"]
        assert pop[f"item{k}"] == pytest.approx(oracle_evidence(mine, T0 + 10 * DAY_S), rel=1e-6)


def _process_writer(path: str, who: int, n: int, go: object) -> None:
    s = ProfileStore(Path(path), PersonalConfig())
    vecs = item_vectors()
    go.wait(60)  # type: ignore[attr-defined] - both processes start writing together
    for i in range(n):
        s.record([Event(f"shared{i % 2}", f"item{i % 10}", "click", T0 + who * 1e5 + i)], vecs)
    s.close()


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    ProfileStore(path, CFG).close()
    ctx = multiprocessing.get_context("spawn")
    n = 600
    go = ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(str(path), who, n, go)) for who in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    s = ProfileStore(path, CFG)
    assert s.count_events() == 2 * n
    for u in ("shared0", "shared1"):
        prof = s.profile(u)
        assert prof is not None and prof["counts"]["click"] == n


def test_delete_forgets_the_shopper_and_their_popularity(store: ProfileStore) -> None:
    vecs = item_vectors()
    store.record([Event("gone", "item1", "purchase", T0), Event("gone", "item2", "click", T0 + DAY_S),
                  Event("stay", "item1", "click", T0 + 2 * DAY_S)], vecs)
    before = store.popularity(["item1", "item2"], now=T0 + 2 * DAY_S)
    assert before["item1"] == pytest.approx(CFG.purchase * 0.5 ** (2 / 30) + CFG.click)
    assert store.delete("gone") is True
    assert store.get("gone") is None and store.profile("gone") is None and store.purchased("gone") == set()
    assert list(store.events(user_id="gone")) == []
    after = store.popularity(["item1", "item2"], now=T0 + 2 * DAY_S)
    assert after["item1"] == pytest.approx(CFG.click) and after["item2"] == 0.0
    assert store.profile("stay") is not None and store.count_events() == 1
    assert store.delete("gone") is False


def test_popularity_is_recency_weighted(store: ProfileStore) -> None:
    vecs = item_vectors()
    h = CFG.half_life_days * DAY_S
    events = [Event("u1", "item0", "purchase", T0), Event("u2", "item0", "view", T0 + h),
              Event("u3", "item1", "click", T0 + 2 * h), Event("u2", "item0", "click", T0 - h)]
    store.record(events, vecs)
    pop = store.popularity(["item0", "item1", "item9"], now=T0 + 2 * h)
    assert pop["item0"] == pytest.approx(CFG.purchase * 0.25 + CFG.view * 0.5 + CFG.click * 0.125)
    assert pop["item1"] == pytest.approx(CFG.click)
    assert pop["item9"] == 0.0


def test_purchased_and_event_log_queries(store: ProfileStore) -> None:
    vecs = item_vectors()
    store.record([Event("u", "item1", "purchase", T0), Event("u", "item2", "click", T0 + 1),
                  Event("u", "item3", "purchase", T0 + 2), Event("v", "item4", "purchase", T0 + 3)], vecs)
    assert store.purchased("u") == {"item1", "item3"}
    assert [e.item_id for e in store.events(user_id="u")] == ["item1", "item2", "item3"]
    assert [e.item_id for e in store.events(since=T0 + 2)] == ["item3", "item4"]
    assert list(store.events())[0] == Event("u", "item1", "purchase", T0)
    # newest first by event time (a replayed log may arrive out of order), each item once, at most `limit`
    store.record([Event("u", "item5", "purchase", T0 - 5), Event("u", "item1", "purchase", T0 + 9)], vecs)
    assert store.recent_purchases("u", 10) == ["item1", "item3", "item5"]
    assert store.recent_purchases("u", 2) == ["item1", "item3"]
    assert store.recent_purchases("u", 0) == [] and store.recent_purchases("nobody", 5) == []


def test_events_without_vectors_are_counted_but_do_not_make_a_vector(store: ProfileStore) -> None:
    store.record([Event("u", "unknown-item", "click", T0)], {})
    assert store.get("u") is None  # nothing to personalise with yet
    prof = store.profile("u")
    assert prof is not None and prof["counts"]["click"] == 1 and prof["has_vector"] is False
    store.record([Event("u", "item0", "view", T0 + 1)], item_vectors())
    state = store.get("u")
    assert state is not None and state.counts == {"click": 1, "view": 1} and state.evidence == CFG.view


@pytest.mark.parametrize("bad, message", [
    (Event("", "item0", "click", T0), "user_id"),
    (Event("u", "  ", "click", T0), "item_id"),
    (Event("u", "item0", "like", T0), "unknown event"),
    (Event("u", "item0", "click", float("nan")), "bad ts"),
    (Event("u", "item0", "click", -1.0), "bad ts"),
])
def test_invalid_events_reject_the_whole_batch(store: ProfileStore, bad: Event, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        store.record([Event("u", "item1", "click", T0), bad], item_vectors())
    assert store.count_events() == 0 and store.profile("u") is None


def test_a_failure_mid_transaction_writes_nothing(store: ProfileStore) -> None:
    class Exploding(dict):
        def get(self, key, default=None):  # noqa: ANN001, ANN201 - dict override
            if key == "item5":
                raise RuntimeError("vector lookup failed")
            return super().get(key, default)

    vecs = Exploding(item_vectors())
    with pytest.raises(RuntimeError):
        store.record([Event("u", "item1", "click", T0), Event("u", "item5", "click", T0 + 1)], vecs)
    assert store.count_events() == 0 and store.profile("u") is None
    assert store.popularity(["item1"], now=T0) == {"item1": 0.0}
    assert store.record([Event("u", "item1", "click", T0)], vecs) == 1  # the store is still usable
