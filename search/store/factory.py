"""`open_store(cfg)`: the store backend config names; backends are imported only when chosen."""

from __future__ import annotations

from pathlib import Path

from search.store.interface import Store
from vitrina.config import Config
from vitrina.errors import ConfigError


def open_store(cfg: Config, root: Path | None = None) -> Store:
    """The backend named by cfg.store.backend: `edge` (in-process, on disk; under `root`, default
    data_dir/store) or `qdrant` (client)."""
    backend = cfg.store.backend
    if backend == "edge":
        from search.store.edge import EdgeStore, IndexSettings

        sc = cfg.store
        return EdgeStore(root or cfg.data_dir / "store", timeout_s=sc.timeout_s, bm25_avg_len=sc.bm25_avg_len,
                         hnsw_ef=sc.hnsw_ef or None, payload_cache=sc.payload_cache, index=IndexSettings.of(sc),
                         acorn=sc.acorn_selectivity, oversampling=sc.quantization_oversampling,
                         search_threads=sc.search_threads)
    if backend == "qdrant":
        from search.store.qdrant import QdrantStore

        return QdrantStore.from_config(cfg.store)
    raise ConfigError(f"[store].backend must be 'edge' or 'qdrant', got {backend!r}")
