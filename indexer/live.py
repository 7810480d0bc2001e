"""The live collection behind the alias, and a status report of the index (`vitrina info`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from indexer.changelog import ChangeLog, changes_dir
from indexer.state import load_state, report_path
from search.store.factory import open_store
from search.store.interface import Store
from vitrina.config import Config
from vitrina.errors import NotFound, VitrinaError

log = logging.getLogger(__name__)


def live_collection(cfg: Config, store: Store) -> str:
    """The collection [store].alias points at; NotFound when there is no index yet."""
    target = store.get_alias(cfg.store.alias)
    if target is None:
        raise NotFound(f"no index behind alias {cfg.store.alias!r} yet", detail="run `vitrina reindex` first")
    return target


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
            "changes": _changes(cfg),
        }
    finally:
        if own:
            store.close()


def _changes(cfg: Config) -> dict[str, Any] | None:
    """The write log's size and checkpoints (None before the first write through the API or the CLI)."""
    path = changes_dir(cfg) / f"{cfg.store.alias}.sqlite"
    if not path.is_file():
        return None
    with ChangeLog(path, lock_timeout_s=1.0) as changelog:
        return changelog.stats()
