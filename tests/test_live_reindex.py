"""No write lost during a reindex: a real `vitrina serve` takes writes from 8 threads (create, re-embed, patch,
delete) and searches from 4 while a real `vitrina reindex` builds the next collection and moves the alias (also
killed with SIGKILL part-way and rerun, and again with `--workers 2`); afterwards every acknowledged write is in the
index exactly."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from indexer.pipeline import reindex
from indexer.state import load_state
from search.store.factory import open_store
from tests.helpers import ServeProcess, http_json, kill_when_settled, make_config, product_rows, write_catalogue
from tests.test_indexer import write_config
from tests.tiny_models import write_tiny_checkpoint

KEY = "live-key"
WRITERS, SEARCHERS, N = 8, 4, 120
REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("data", "catalogue", "image_encoder", "runtime", "indexer", "store", "web", "live")


class Writer(threading.Thread):
    """One writer: owns catalogue items k, k+8, ... and the items it creates; what the service acknowledged is
    what the index must hold in the end (`want`: id -> fields, None = deleted)."""

    def __init__(self, k: int, url: str, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{k}", daemon=True)
        self.k, self.url, self.stop = k, url, stop
        self.rng = random.Random(k)
        self.own = [str(1000 + i) for i in range(k, N, WRITERS)]
        self.want: dict[str, dict[str, Any] | None] = {}
        self.created: list[str] = []
        self.failures: list[Any] = []
        self.late: list[str] = []  # created items search did not find within 1 s
        self.acks = 0

    def call(self, method: str, path: str, body: Any) -> list[dict[str, Any]] | None:
        status, answer = http_json(method, self.url + path, body, KEY, timeout=120)
        if status not in (200, 201) or answer.get("errors"):
            self.failures.append((method, path, status, answer))
            return None
        self.acks += len(answer["items"])
        return answer["items"]

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            word = f"kw{self.k}x{n}"
            new = {"id": f"t{self.k}-{n}", "title": f"Men Red Caps {word}", "gender": "Men", "articleType": "Caps",
                   "baseColour": "Red", "price": str(n), "image": f"images/{1000 + self.k}.jpg"}
            if self.call("POST", "/api/items", [new]) is not None:
                self.want[new["id"]] = {"title": new["title"], "price": float(n)}
                self.created.append(new["id"])
                self.check_found(word, new["id"])
            target = self.rng.choice(self.own + self.created)
            if self.want.get(target, {}) is not None:
                stock = self.rng.randrange(100)
                if self.call("PATCH", f"/api/items/{target}", {"stock": stock, "price": stock / 2}) is not None:
                    self.want[target] = {**(self.want.get(target) or {}), "stock": stock, "price": stock / 2}
            if n % 3 == 0:
                renamed = self.rng.choice(self.own)
                if self.want.get(renamed, {}) is not None:
                    row = {"id": renamed, "title": f"Women Blue Shoes renamed {n}", "gender": "Women",
                           "articleType": "Shoes", "baseColour": "Blue", "price": "5", "image": "images/1001.jpg"}
                    if self.call("PUT", "/api/items", [row]) is not None:
                        self.want[renamed] = {"title": row["title"], "price": 5.0, "stock": None}
            if n % 4 == 0:
                victim = self.rng.choice(self.created[-3:] + self.own)
                if self.want.get(victim, {}) is not None and self.call("DELETE", f"/api/items/{victim}", None):
                    self.want[victim] = None
            time.sleep(0.05)

    def check_found(self, word: str, item_id: str) -> None:
        """Read your write: the item at once by id, and by search within 1 s."""
        if http_json("GET", f"{self.url}/api/items/{item_id}")[0] != 200:
            self.late.append(item_id)
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            status, found = http_json("GET", f"{self.url}/api/search?q={word}&mode=keyword&k=3")
            if status == 200 and [r["id"] for r in found["results"]] == [item_id]:
                return
            time.sleep(0.05)
        self.late.append(item_id)


def searcher(url: str, stop: threading.Event, seen: list[int], errors: list[Any]) -> None:
    queries = ["red caps", "women blue shoes", "men watches", "black handbags", "renamed", "green jeans"]
    n = 0
    while not stop.is_set():
        try:
            status, answer = http_json("GET", f"{url}/api/search?q={quote(queries[n % len(queries)])}&k=10")
        except OSError as e:
            status, answer = -1, repr(e)
        if status == 200:
            seen.append(n)
        else:
            errors.append((status, answer))
        n += 1


def run_reindex(config: Path, kill_at: int | None, cfg: Any) -> None:
    """`vitrina reindex` in another process; with kill_at, SIGKILL it once it has settled that many rows, then rerun."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "scripts.cli", "--config", str(config), "reindex", "--no-progress"]
    if kill_at is not None:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        kill_when_settled(proc, cfg, kill_at, timeout_s=300)
        state = load_state(cfg)
        assert state is not None and 0 < state.position < N
        time.sleep(2.0)  # writes go on meanwhile, into the live collection and the log
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("(resumed)" in done.stdout) == (kill_at is not None)
    assert "replayed" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("kill", "workers"), [(False, 1), (True, 1), (False, 2)],
                         ids=["reindex", "reindex-kill-9-rerun", "reindex-2-workers"])
def test_every_acknowledged_write_survives_a_concurrent_reindex(tmp_path: Path, kill: bool, workers: int) -> None:
    """With 2 workers (each on its own copy of the index, indexer/replica.py) the writes, reads and searches of
    one thread land on either worker: a write is read back from whichever answers next."""
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", product_rows(N)), web={"api_keys": (KEY,)},
                      indexer={"batch_size": 4, "checkpoint_every": 1})
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    first = reindex(cfg, progress=False).collection
    config = write_config(tmp_path / "vitrina.toml", cfg, SECTIONS)
    server = ServeProcess(config, "--threads", "8", "--workers", str(workers))
    stop, stop_search = threading.Event(), threading.Event()
    writers = [Writer(k, server.url, stop) for k in range(WRITERS)]
    seen: list[int] = []
    errors: list[Any] = []
    searchers = [threading.Thread(target=searcher, args=(server.url, stop_search, seen, errors), daemon=True)
                 for _ in range(SEARCHERS)]
    try:
        for t in writers + searchers:
            t.start()
        time.sleep(2.0)
        run_reindex(config, random.Random().randint(8, N - 40) if kill else None, cfg)
        time.sleep(2.0)  # and after the swap, into the new collection
        stop.set()
        for w in writers:
            w.join(180)
        stop_search.set()
        for t in searchers:
            t.join(60)
        status, health = http_json("GET", f"{server.url}/health")
        assert status == 200 and health["index"]["collection"] != first
        want: dict[str, dict[str, Any] | None] = {str(1000 + i): {} for i in range(N)}
        for w in writers:
            want.update(w.want)
            assert not w.failures, w.failures[:3]
            assert not w.late, w.late[:5]
        alive = {i: fields for i, fields in want.items() if fields is not None}
        assert health["index"]["points"] == len(alive)
        for item_id, fields in want.items():  # through the service: what shoppers see
            code, item = http_json("GET", f"{server.url}/api/items/{item_id}")
            assert code == (404 if fields is None else 200), (item_id, fields, item)
    finally:
        stop.set()
        stop_search.set()
        code = server.stop()
    assert code == 0, server.output()[-3000:]
    assert not errors, errors[:5]
    assert len(seen) > 50 and sum(w.acks for w in writers) > 100, (len(seen), [w.acks for w in writers])
    store = open_store(cfg)  # and on disk, after a clean stop: exactly the acknowledged state
    try:
        hits = list(store.scroll(cfg.store.alias))
        assert len(hits) == len({h.id for h in hits}) == len(alive)
        for h in hits:
            for key, value in alive[h.id].items():
                assert h.payload.get(key) == value, (h.id, key, h.payload)
    finally:
        store.close()


class WriteDuringFinalize:
    """A store whose finalize (between the replay and the locked hand-over) lets a writer slip a write in."""

    def __init__(self, store: Any, write: Any) -> None:
        self.store, self.write = store, write

    def finalize(self, collection: str) -> None:
        self.write()
        self.store.finalize(collection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_writes_during_the_hand_over_and_from_other_models_reach_the_new_collection(tmp_path: Path) -> None:
    import numpy as np

    from indexer.changelog import Change
    from indexer.items import parse_item
    from indexer.writer import ItemWriter, write_items

    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", product_rows(12)))
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    first = reindex(cfg, progress=False).collection
    row = {"id": "late", "title": "Men Black Watches late", "gender": "Men", "articleType": "Watches",
           "baseColour": "Black", "image": "images/1002.jpg"}
    old = {**row, "id": "old-model", "title": "Men Black Watches old"}
    store = open_store(cfg)
    writer = ItemWriter(cfg, store)
    try:
        # a write logged by a service that ran other models: its vectors must not be copied, but made again
        item = parse_item(cfg, old, trusted=True)
        stale = Change("upsert", "old-model", record=write_records(writer, item, first), source=old, stamp="other")
        writer.log.append([stale])
        summary = reindex(cfg, progress=False, store=WriteDuringFinalize(
            store, lambda: write_items(writer, [row])))
        assert summary.replayed == 2 and store.get_alias(cfg.store.alias) == summary.collection != first
        got = {h.id: h for h in store.retrieve(cfg.store.alias, ["late", "old-model"], with_vectors=True)}
        assert set(got) == {"late", "old-model"}  # the write made during finalize came in under the lock
        made = writer.embedder(summary.collection).embed([item.product])[0][0]
        np.testing.assert_allclose(got["old-model"].vectors["fused"], made.vectors["fused"], atol=1e-3)
        assert not np.allclose(got["old-model"].vectors["fused"], stale.record.vectors["fused"], atol=1e-2)
        assert writer.log.applied(summary.collection) == writer.log.max_seq()
    finally:
        writer.close()
        store.close()


def write_records(writer: Any, item: Any, collection: str) -> Any:
    """A record for `item` with vectors no model of this config made (as if logged under other models)."""
    import dataclasses

    import numpy as np

    record = writer.embedder(collection).embed([item.product])[0][0]
    rng = np.random.default_rng(0)
    noise = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in record.vectors.items()}
    noise = {k: v / np.linalg.norm(v) for k, v in noise.items()}
    return dataclasses.replace(record, vectors=noise)
