"""Reindex pipeline: skips with reasons, image vectors, idempotent reruns, resume after a crash or kill -9,
verified alias swaps that searches never see half-done, and old versions pruned to [store].keep."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.pipeline import reindex, versions_of
from indexer.state import load_state, report_path, state_path
from search.store.factory import open_store
from search.store.interface import KeywordQuery
from tests.helpers import kill_when_settled, make_config, product_rows, write_catalogue
from vitrina.config import Config
from vitrina.errors import StoreError, VitrinaError

REPO = Path(__file__).resolve().parent.parent


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, cfg: Config, sections: tuple[str, ...] = ("data", "catalogue", "image_encoder",
                                                                        "runtime", "indexer", "store")) -> Path:
    """The given sections of cfg as a TOML file, for commands run through the CLI or a subprocess."""
    lines = []
    for name in sections:
        lines.append(f"[{name}]")
        for key, value in vars(getattr(cfg, name)).items():
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stored_ids(cfg: Config, name: str | None = None) -> list[str]:
    store = open_store(cfg)
    try:
        return [h.id for h in store.scroll(name or cfg.store.alias)]
    finally:
        store.close()


def test_bad_rows_and_images_are_skipped_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = product_rows(20)
    rows[2]["title"] = ""
    rows[5]["price"] = "cheap"
    rows[7]["id"] = rows[6]["id"]
    cat = write_catalogue(tmp_path / "shop", rows)
    (tmp_path / "shop" / rows[9]["image"]).write_bytes(b"this is not a jpeg")
    (tmp_path / "shop" / rows[10]["image"]).unlink()
    data = (tmp_path / "shop" / rows[11]["image"]).read_bytes()
    (tmp_path / "shop" / rows[11]["image"]).write_bytes(data[: len(data) // 2])  # truncated
    cfg = make_config(tmp_path, cat, indexer={"batch_size": 4})
    summary = reindex(cfg, progress=False)
    assert summary.indexed == 14 and summary.skipped == 6
    assert not summary.image_vectors and "no trained image tower" in caplog.text
    by_id = {s["id"]: s["reason"] for s in summary.skipped_items}
    assert by_id[rows[2]["id"]] == "empty title" and by_id[rows[7]["id"]] == "duplicate id"
    assert by_id[rows[5]["id"]].startswith("bad price")
    assert "not found" in by_id[rows[10]["id"]] and by_id[rows[9]["id"]].startswith("bad image")
    assert by_id[rows[11]["id"]].startswith("bad image")
    assert sum(summary.skipped_by_reason.values()) == 6
    report = json.loads(report_path(cfg).read_text())
    assert report["indexed"] == 14 and len(report["skipped_items"]) == 6
    assert not state_path(cfg).exists()  # a finished run leaves no checkpoint
    store = open_store(cfg)
    try:
        assert store.count(cfg.store.alias) == 14
        hit = store.retrieve(cfg.store.alias, [rows[0]["id"]], with_vectors=True)[0]
        assert set(hit.vectors) == {"text", "fused"}  # text only: never random image vectors
        np.testing.assert_allclose(hit.vectors["fused"], hit.vectors["text"], atol=1e-5)
        from encoders import create_text_encoder

        direct = create_text_encoder(cfg).encode([rows[0]["title"]])[0]  # text == title: its words cover the rest
        assert float(direct @ hit.vectors["text"]) > 0.995  # whichever text-model copy encoded it
        assert hit.payload["title"] == rows[0]["title"] and hit.payload["price"] == float(rows[0]["price"])
    finally:
        store.close()


def test_image_vectors_with_a_trained_tower(cfg: Config) -> None:
    from tests.tiny_models import write_tiny_checkpoint

    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    summary = reindex(cfg.replace(indexer={"batch_size": 16}), progress=False)
    assert summary.image_vectors and summary.indexed == 48
    store = open_store(cfg)
    try:
        hits = store.retrieve(cfg.store.alias, ["1000", "1001"], with_vectors=True)
        for h in hits:
            assert set(h.vectors) == {"text", "image", "fused"}
            assert np.linalg.norm(h.vectors["fused"]) == pytest.approx(1.0, abs=1e-3)
            assert not np.allclose(h.vectors["fused"], h.vectors["text"], atol=1e-3)
    finally:
        store.close()


def test_jsonl_catalogue_keeps_zero_padded_ids(tmp_path: Path) -> None:
    rows = product_rows(6)
    for i, r in enumerate(rows):
        r["id"] = f"011156500{i}"
        r["image"] = f"images/{r['id']}.jpg"
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", rows, fmt="jsonl"))
    assert reindex(cfg, progress=False).indexed == 6
    assert sorted(stored_ids(cfg)) == [r["id"] for r in rows]


def test_rerun_is_idempotent_and_keeps_n_old_versions(cfg: Config) -> None:
    cfg = cfg.replace(store={"keep": 1})
    names = []
    for _ in range(3):
        s = reindex(cfg, progress=False)
        names.append(s.collection)
        ids = stored_ids(cfg)
        assert len(ids) == 48 and len(set(ids)) == 48
    store = open_store(cfg)
    try:
        assert store.get_alias(cfg.store.alias) == names[-1]
        assert versions_of(store, cfg.store.alias) == names[-2:]  # the live one and `keep` = 1 older
    finally:
        store.close()
    assert s.dropped == [names[0]] and s.previous == names[1]


class FailingStore:
    """Wraps a store; the n-th upsert raises, like a crash in the middle of a reindex."""

    def __init__(self, store: Any, fail_at: int) -> None:
        self._store, self.fail_at, self.calls = store, fail_at, 0

    def upsert(self, collection: str, items: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise StoreError("disk on fire")
        self._store.upsert(collection, items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_resume_after_a_crash_continues_into_the_same_collection(cfg: Config) -> None:
    cfg = cfg.replace(indexer={"batch_size": 4, "checkpoint_every": 1})
    store = open_store(cfg)
    try:
        with pytest.raises(StoreError, match="disk on fire"):
            reindex(cfg, progress=False, store=FailingStore(store, fail_at=6))
        state = load_state(cfg)
        assert state is not None and state.position == 20 and state.indexed == 20
        assert store.get_alias(cfg.store.alias) is None  # nothing half-built is searchable
        again = reindex(cfg, progress=False, store=store)
        assert again.resumed and again.collection == state.collection
        assert again.indexed == 48 and again.written == 28  # only the rest was encoded again
        ids = [h.id for h in store.scroll(cfg.store.alias)]
        assert len(ids) == 48 and len(set(ids)) == 48
    finally:
        store.close()


def test_changed_catalogue_refuses_to_resume_until_fresh(cfg: Config) -> None:
    cfg = cfg.replace(indexer={"batch_size": 4, "checkpoint_every": 1})
    store = open_store(cfg)
    try:
        with pytest.raises(StoreError):
            reindex(cfg, progress=False, store=FailingStore(store, fail_at=2))
        half = load_state(cfg).collection  # type: ignore[union-attr]
        write_catalogue(Path(cfg.catalogue.path).parent, product_rows(30), images=False)
        with pytest.raises(VitrinaError, match="--fresh"):
            reindex(cfg, progress=False, store=store)
        s = reindex(cfg, fresh=True, progress=False, store=store)
        assert s.indexed == 30 and s.collection != half and half not in store.list_collections()
    finally:
        store.close()


def test_count_mismatch_does_not_move_the_alias(cfg: Config) -> None:
    first = reindex(cfg, progress=False)

    class Lying(FailingStore):
        def count(self, collection: str, filters: Any = None) -> int:
            return self._store.count(collection, filters) - 1

    store = open_store(cfg)
    try:
        with pytest.raises(StoreError, match="NOT moved"):
            reindex(cfg, progress=False, store=Lying(store, fail_at=-1))
        assert store.get_alias(cfg.store.alias) == first.collection
    finally:
        store.close()


@pytest.mark.slow
def test_kill_9_mid_reindex_then_rerun_while_searching(tmp_path: Path) -> None:
    """A real `vitrina reindex` is SIGKILLed at a random point; a searcher thread sees only complete collections."""
    n = 120
    cat = write_catalogue(tmp_path / "shop", product_rows(n))
    cfg = make_config(tmp_path, cat, indexer={"batch_size": 4, "checkpoint_every": 1})
    config = write_config(tmp_path / "vitrina.toml", cfg)
    first = reindex(cfg, progress=False)  # the old, complete collection searches use meanwhile
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "scripts.cli", "--config", str(config), "reindex", "--no-progress"]

    seen: list[tuple[str | None, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        store = open_store(cfg)
        try:
            while not stop.is_set():
                try:
                    target = store.get_alias(cfg.store.alias)
                    count = store.count(cfg.store.alias)
                    hits = store.query(cfg.store.alias, KeywordQuery("red tshirts"), limit=5)
                    seen.append((target, count if hits else -1))
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                time.sleep(0.01)
        finally:
            store.close()

    searcher = threading.Thread(target=search, daemon=True)
    searcher.start()
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        kill_when_settled(proc, cfg, random.Random().randint(8, n - 40))
        state = load_state(cfg)
        assert state is not None and 0 < state.position < n
        half = state.collection
        assert open_store(cfg).get_alias(cfg.store.alias) == first.collection

        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "(resumed)" in rerun.stdout and half in rerun.stdout
        time.sleep(0.3)  # let the searcher see the swap
    finally:
        stop.set()
        searcher.join(10)
    assert not errors, errors[:3]
    ids = stored_ids(cfg)
    assert len(ids) == n and len(set(ids)) == n
    targets = {t for t, _ in seen}
    assert targets <= {first.collection, half} and first.collection in targets
    assert {c for _, c in seen} == {n}  # never a partial (or empty) collection behind the alias
    assert load_state(cfg) is None


def test_a_catalogue_with_nothing_indexable_never_replaces_the_live_index(cfg: Config, tmp_path: Path) -> None:
    first = reindex(cfg, progress=False)
    rows = product_rows(5)
    for r in rows:
        r["title"] = ""
    write_catalogue(Path(cfg.catalogue.path).parent, rows, images=False)
    with pytest.raises(VitrinaError, match="NOT moved"):
        reindex(cfg, progress=False)
    assert json.loads(report_path(cfg).read_text())["skipped"] == 5
    assert stored_ids(cfg) and open_store(cfg).get_alias(cfg.store.alias) == first.collection


@pytest.mark.parametrize("parallel", [True, False])
def test_a_text_the_catalogue_repeats_is_encoded_once(tmp_path: Path, parallel: bool) -> None:
    from indexer.embed import Embedder
    from indexer.reader import Product, read_catalogue
    from tests.tiny_models import write_tiny_checkpoint

    rows = product_rows(24)
    for i, row in enumerate(rows):  # four titles, each six times: ids differ, texts repeat
        row["title"], row["gender"], row["baseColour"], row["articleType"] = f"same title {i % 4}", "Men", "Red", "Caps"
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", rows),
                      indexer={"parallel_encode": parallel}, runtime={"threads": 2})
    cfg = cfg.replace(image_encoder={"checkpoint": str(write_tiny_checkpoint(tmp_path / "tower.pt"))})
    from indexer.embed import load_image_encoder

    products = [p for p in read_catalogue(cfg) if isinstance(p, Product)]
    with Embedder(cfg, load_image_encoder(cfg)[0], bulk=True) as embedder:
        seen: list[str] = []
        for name in ("text_encoder", "_text_twin"):
            encoder = getattr(embedder, name)
            if encoder is None:
                continue

            class Counting:  # the real encoder, with the texts it was asked for noted
                def __init__(self, inner: Any) -> None:
                    self.inner, self.dim = inner, inner.dim

                def encode(self, texts: list[str]) -> np.ndarray:
                    seen.extend(texts)
                    return self.inner.encode(texts)

            setattr(embedder, name, Counting(encoder))
        first, _ = embedder.embed(products[:12])
        second, _ = embedder.embed(products[12:])
        alone = embedder.text_encoder.inner.encode(["same title 0, Men, Red, Caps"])[0]
    assert sorted(seen) == sorted({p.text for p in products}) and len(seen) == 4  # each text once, across batches
    records = first + second
    assert [r.id for r in records] == [p.id for p in products]
    for r, p in zip(records, products):
        same = records[products.index(next(q for q in products if q.text == p.text))]
        np.testing.assert_array_equal(r.vectors["text"], same.vectors["text"])
        assert not np.array_equal(r.vectors["image"], same.vectors["image"]) or r.id == same.id
    np.testing.assert_allclose(records[0].vectors["text"], alone, atol=2e-2)


def test_mirror_view_off_indexes_one_view_of_each_photo(cfg: Config) -> None:
    from encoders import create_image_encoder
    from indexer.embed import model_stamp
    from tests.tiny_models import write_tiny_checkpoint
    from vitrina.images import load_image

    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    both = cfg.replace(image_encoder={"flip_average": True}, indexer={"batch_size": 16})
    one = both.replace(indexer={"mirror_view": False})
    assert model_stamp(one, "t") != model_stamp(both, "t")  # a record from the other setting is re-embedded
    reindex(one, progress=False)
    store = open_store(one)
    try:
        got = store.retrieve(one.store.alias, ["1000"], with_vectors=True)[0].vectors["image"]
    finally:
        store.close()
    photo = load_image("images/1000.jpg", Path(cfg.catalogue.path).parent, cfg.indexer)
    single = create_image_encoder(one.replace(image_encoder={"flip_average": False})).encode([photo])[0]
    mirrored = create_image_encoder(both).encode([photo])[0]
    np.testing.assert_allclose(got, single, atol=2e-2)
    assert float(np.abs(got - mirrored).max()) > 5 * float(np.abs(got - single).max())


def test_live_text_precision_embeds_writes_with_that_encoder_under_their_own_stamp(cfg: Config) -> None:
    from encoders import create_text_encoder
    from indexer.embed import live_side, model_stamp, tower_runtime
    from indexer.replay import Embedders

    assert live_side(cfg) is cfg  # "": writes embed as the index does
    fp32 = cfg.replace(live={"text_precision": "fp32"})
    reindex(fp32, progress=False)
    store = open_store(fp32)
    embedders = Embedders(fp32, store)
    try:
        embedder = embedders(store.get_alias(fp32.store.alias))
        assert embedder.text_encoder is create_text_encoder(tower_runtime(live_side(fp32)))
        assert embedder.text_encoder is not create_text_encoder(tower_runtime(fp32))  # the index's
        # a reindex (index-side stamp) embeds the writes it replays again rather than keep their vectors
        assert embedder.stamp == model_stamp(live_side(fp32), "") != model_stamp(fp32, "")
    finally:
        embedders.close()
        store.close()
