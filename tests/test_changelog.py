"""The change log (SQLite, fsync'd, shared by processes) and its replay: any suffix of the log that starts at or
before the first missing entry, replayed in order, ends in the state a plain dict oracle computes."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.changelog import Change, ChangeLog
from indexer.replay import apply_changes
from search.store.factory import open_store
from search.store.interface import ItemRecord
from tests.helpers import make_config
from vitrina.errors import StoreError

DIM = 8
DIMS = {"text": DIM, "fused": DIM}
REPO = Path(__file__).resolve().parent.parent


def record(item_id: str, rng: np.random.Generator, **payload: Any) -> ItemRecord:
    vecs = {k: (v := rng.normal(size=DIM).astype(np.float32)) / np.linalg.norm(v) for k in DIMS}
    return ItemRecord(item_id, vecs, f"word{item_id} {payload.get('colour', '')}",
                      {"title": f"item {item_id}", **payload})


def test_append_read_roundtrip_and_checkpoints(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    r = record("sku/1", rng, colour="red", price=12.5, stock=3)
    with ChangeLog(tmp_path / "log.sqlite") as log:
        assert log.max_seq() == 0 and log.applied("c1") is None
        first = log.append([Change("upsert", "sku/1", record=r, source={"id": "sku/1", "title": "x"}, stamp="s1")])
        t_mid = time.time()
        time.sleep(0.01)
        last = log.append([Change("patch", "sku/1", fields={"price": 9.0, "colour": None}),
                           Change("delete", "sku/2")])
        assert (first, last) == (1, 3)
        log.set_applied("c1", 2)
        log.set_applied("c1", 3)
    with ChangeLog(tmp_path / "log.sqlite") as log:  # reopened: everything is on disk
        got = list(log.read())
        assert [(c.seq, c.op, c.item_id) for c in got] == [(1, "upsert", "sku/1"), (2, "patch", "sku/1"),
                                                             (3, "delete", "sku/2")]
        up = got[0]
        assert up.stamp == "s1" and up.source == {"id": "sku/1", "title": "x"} and up.record is not None
        assert up.record.payload == r.payload and up.record.keywords == r.keywords
        for k, v in r.vectors.items():
            assert np.array_equal(up.record.vectors[k], v)  # bit for bit
        assert got[1].fields == {"price": 9.0, "colour": None}
        assert [c.seq for c in log.read(after=1, until=2)] == [2]
        assert log.seq_before(t_mid) == 1 and log.seq_before(0) == 0 and log.seq_before(time.time() + 9) == 3
        assert log.applied("c1") == 3 and log.stats()["entries"] == 3
        assert log.prune(t_mid, 3, keep=set()) == 1
        assert [c.seq for c in log.read()] == [2, 3] and log.applied("c1") is None
        assert log.append([Change("delete", "x")]) == 4  # sequence numbers are never reused
        # a reindex prunes everything before its catalogue: the log's position stays where it was, so the new
        # collection's checkpoint (seq_before) and a replica's target (max_seq) agree that nothing is missing
        assert log.prune(time.time() + 9, 4, keep=set()) == 3
        assert list(log.read()) == [] and log.max_seq() == 4 and log.seq_before(time.time() + 9) == 4


def test_a_replay_with_nothing_to_apply_loads_no_model(tmp_path: Path) -> None:
    """Replicas replay [their copy's checkpoint, the log's end]; an empty range (all of it pruned) must not load
    the write-side encoders (torch, ~0.8 GB a serving process)."""
    from indexer.replay import replay_log

    class NoModels:
        cfg = make_config(tmp_path)

        def __call__(self, collection: str) -> Any:
            raise AssertionError("an embedder was loaded for an empty replay")

    store = open_store(make_config(tmp_path))
    try:
        store.create_collection("c", DIMS, (), ())
        with ChangeLog(tmp_path / "log.sqlite") as log:
            log.append([Change("delete", "a"), Change("delete", "b")])
            log.prune(time.time() + 9, 2, keep=set())
            stats = replay_log(store, "c", log, 0, log.max_seq(), NoModels())  # type: ignore[arg-type]
            assert stats.applied == 0 and log.max_seq() == 2
    finally:
        store.close()


def test_write_lock_is_held_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    ChangeLog(path).close()
    code = ("import sys, time; from pathlib import Path; from indexer.changelog import ChangeLog\n"
            f"log = ChangeLog(Path({str(path)!r}))\n"
            "with log.locked():\n    print('held', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with ChangeLog(path) as log:
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="another process"):
                with log.locked(timeout_s=0.3):
                    pass
            assert time.monotonic() - t0 >= 0.3
            proc.kill()  # a killed holder releases the lock
            proc.wait()
            with log.locked(timeout_s=5):
                pass
    finally:
        proc.kill()
        proc.wait()


def oracle(changes: list[Change], start: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    state = {k: dict(v) for k, v in start.items()}
    for c in changes:
        if c.op == "upsert" and c.record is not None:
            state[c.item_id] = {**c.record.payload, "item_id": c.item_id}
        elif c.op == "delete":
            state.pop(c.item_id, None)
        elif c.item_id in state:
            for k, v in c.fields.items():
                if v is None:
                    state[c.item_id].pop(k, None)
                else:
                    state[c.item_id][k] = v
    return state


def test_replaying_any_suffix_gives_the_oracle_state(tmp_path: Path) -> None:
    """300 random upserts, patches and deletes over 25 ids; a collection that applied the first k of them
    (k random), replayed from any j <= k, ends like the oracle that applied them all once."""
    rng = np.random.default_rng(1)
    pick = random.Random(1)
    changes = []
    for _ in range(300):
        item_id = f"i{pick.randrange(25)}"
        op = pick.choice(["upsert", "upsert", "patch", "delete"])
        if op == "upsert":
            changes.append(Change("upsert", item_id, record=record(item_id, rng, colour=pick.choice("rgb")),
                                  stamp="s"))
        elif op == "patch":
            changes.append(Change("patch", item_id, fields={"stock": pick.randrange(5),
                                                            "colour": pick.choice(["x", None])}))
        else:
            changes.append(Change("delete", item_id))
    cfg = make_config(tmp_path)
    store = open_store(cfg)
    try:
        with ChangeLog(tmp_path / "log.sqlite") as log:
            log.append(changes)
            logged = list(log.read())
            want = oracle(logged, {})
            for trial in range(4):
                name = f"c{trial}"
                store.create_collection(name, DIMS, ("colour",), ("stock",))
                k = pick.randrange(len(logged) + 1)
                j = pick.randrange(k + 1)
                apply_changes(store, name, logged[:k], "s")
                stats = apply_changes(store, name, log.read(after=j), "s", group=pick.choice([1, 7, 256]))
                assert stats.applied == len(logged) - j and stats.last_seq == len(logged)
                got = {h.id: h.payload for h in store.scroll(name)}
                assert got == want, (k, j)
    finally:
        store.close()


def test_stale_upserts_need_an_embedder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cfg = make_config(tmp_path)
    store = open_store(cfg)
    try:
        store.create_collection("c", DIMS, (), ())
        old = Change("upsert", "a", record=record("a", rng), stamp="old-models", seq=1)
        with pytest.raises(StoreError, match="other models"):
            apply_changes(store, "c", [old], "new-models")
        again = record("a", rng, colour="re-embedded")
        stats = apply_changes(store, "c", [old], "new-models", reembed=lambda cs: ([again], []))
        assert stats.reembedded == 1 and store.retrieve("c", ["a"])[0].payload["colour"] == "re-embedded"
    finally:
        store.close()
