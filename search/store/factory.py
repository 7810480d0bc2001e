"""`open_store(cfg)`: the store backend config names; backends are imported only when chosen."""

from __future__ import annotations

from search.store.interface import Store
from vitrina.config import Config
from vitrina.errors import ConfigError


def open_store(cfg: Config) -> Store:
    """The backend named by cfg.store.backend: `edge` (in-process, on disk) or `qdrant` (client)."""
    backend = cfg.store.backend
    if backend == "edge":
        from search.store.edge import EdgeStore

        return EdgeStore(cfg.data_dir / "store", timeout_s=cfg.store.timeout_s, bm25_avg_len=cfg.store.bm25_avg_len,
                         hnsw_ef=cfg.store.hnsw_ef or None)
    if backend == "qdrant":
        from search.store.qdrant import QdrantStore

        return QdrantStore.from_config(cfg.store)
    raise ConfigError(f"[store].backend must be 'edge' or 'qdrant', got {backend!r}")
