"""Changes to the live collection behind the alias (upsert, delete) and a status report of the index."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from indexer.embed import Embedder, load_image_encoder
from indexer.reader import Product, Skipped, parse_row, read_catalogue
from indexer.state import load_state, report_path
from search.store.factory import open_store
from search.store.interface import Store
from vitrina.config import Config
from vitrina.errors import BadInput, NotFound, VitrinaError

log = logging.getLogger(__name__)


def live_collection(cfg: Config, store: Store) -> str:
    """The collection [store].alias points at; NotFound when there is no index yet."""
    target = store.get_alias(cfg.store.alias)
    if target is None:
        raise NotFound(f"no index behind alias {cfg.store.alias!r} yet", detail="run `vitrina reindex` first")
    return target


def parse_items(cfg: Config, text: str | None = None, file: str | Path | None = None
                ) -> tuple[list[Product], list[Skipped]]:
    """Items in catalogue schema: one JSON object (or a JSON list of them) in `text`, or a JSONL/CSV file."""
    if (text is None) == (file is None):
        raise BadInput("give one item as JSON or a file of items, not both or neither")
    items: list[Product | Skipped]
    if file is not None:
        items = list(read_catalogue(cfg, file))
    else:
        try:
            raw = json.loads(text or "")
        except ValueError as e:
            raise BadInput(f"the item is not valid JSON: {e}") from e
        records = raw if isinstance(raw, list) else [raw]
        if not records or not all(isinstance(r, Mapping) for r in records):
            raise BadInput("give a JSON object (or a list of objects) with the catalogue's columns")
        items, seen = [], set()
        for n, record in enumerate(records, start=1):
            item = parse_row(cfg.catalogue, record, n)
            if isinstance(item, Product) and item.id in seen:
                item = Skipped(item.id, "duplicate id", n)
            elif isinstance(item, Product):
                seen.add(item.id)
            items.append(item)
    return [i for i in items if isinstance(i, Product)], [i for i in items if isinstance(i, Skipped)]


def upsert_products(cfg: Config, products: Sequence[Product], store: Store | None = None
                    ) -> tuple[str, int, list[Skipped]]:
    """Encode and write products into the live collection (same id overwrites): (collection, written, skipped).

    Only the live collection changes: a later `vitrina reindex` rebuilds from the catalogue file.
    """
    own = store is None
    store = store or open_store(cfg)
    try:
        collection = live_collection(cfg, store)
        info = store.collection_info(collection)
        image_encoder, why = load_image_encoder(cfg) if "image" in info.dims else (None, "collection is text only")
        if image_encoder is None:
            log.warning("upsert without image vectors: %s", why)
        skipped: list[Skipped] = []
        written = 0
        with Embedder(cfg, image_encoder) as embedder:
            size = max(1, cfg.indexer.batch_size)
            for start in range(0, len(products), size):
                records, bad = embedder.embed(products[start:start + size])
                if records:
                    store.upsert(collection, records)
                skipped += bad
                written += len(records)
        store.flush(collection)
        return collection, written, skipped
    finally:
        if own:
            store.close()


def delete_items(cfg: Config, ids: Sequence[str], store: Store | None = None) -> tuple[str, list[str], list[str]]:
    """Delete ids from the live collection: (collection, deleted ids, ids that were not there)."""
    if not ids or any(not i.strip() for i in ids):
        raise BadInput("give one or more non-empty item ids")
    own = store is None
    store = store or open_store(cfg)
    try:
        collection = live_collection(cfg, store)
        present = {h.id for h in store.retrieve(collection, list(ids))}
        wanted = list(dict.fromkeys(ids))
        store.delete(collection, [i for i in wanted if i in present])
        store.flush(collection)
        return collection, [i for i in wanted if i in present], [i for i in wanted if i not in present]
    finally:
        if own:
            store.close()


def index_info(cfg: Config, store: Store | None = None) -> dict[str, Any]:
    """Alias -> collection, its point count and vectors, all collections, the image tower, reindex state."""
    from encoders import image_tower_status

    own = store is None
    store = store or open_store(cfg.replace(store={"timeout_s": 1.0}))  # a shard busy elsewhere: say so, fast
    try:
        alias = cfg.store.alias
        target = store.get_alias(alias)
        collections: dict[str, Any] = {}
        for name in store.list_collections():
            try:
                ci = store.collection_info(name)
                collections[name] = {"points": ci.points, "vectors": sorted(ci.dims)}
            except VitrinaError as e:  # e.g. open in another process
                collections[name] = {"error": e.message}
        state = load_state(cfg)
        report = report_path(cfg)
        last = None
        if report.is_file():
            try:
                data = json.loads(report.read_text(encoding="utf-8"))
                last = {k: data.get(k) for k in ("collection", "indexed", "skipped", "skipped_by_reason",
                                                 "image_vectors", "wall_s", "items_per_s")}
            except (OSError, ValueError):
                last = None
        return {
            "config": cfg.source or "(built-in defaults)",
            "store": {"backend": cfg.store.backend, "path": str(cfg.data_dir / "store")
                      if cfg.store.backend == "edge" else (cfg.store.url or cfg.store.path)},
            "alias": alias, "collection": target,
            "points": collections.get(target, {}).get("points") if target else None,
            "collections": collections,
            "image_tower": image_tower_status(cfg),
            "reindex_in_progress": None if state is None else {
                "collection": state.collection, "position": state.position, "indexed": state.indexed,
                "skipped": len(state.skipped), "phase": state.phase},
            "last_reindex": last,
        }
    finally:
        if own:
            store.close()
