"""Shared pytest fixtures: offline model loading, a small catalogue with real images, a config for it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import make_config, product_rows, write_catalogue  # noqa: E402
from vitrina.config import Config  # noqa: E402


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A 48-product CSV catalogue with a real 60x80 JPEG per product."""
    return write_catalogue(tmp_path / "shop", product_rows(48))


@pytest.fixture
def cfg(tmp_path: Path, catalogue: Path) -> Config:
    """Config for the small catalogue, data under tmp_path, embedded edge store."""
    return make_config(tmp_path, catalogue)


@pytest.fixture(scope="module")
def shop_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(cfg, store, rows): 48 products indexed with real MiniLM text vectors (test_engine.build_index), one per
    test module; the store is closed after the module."""
    from tests.test_engine import build_index

    cfg, store, rows = build_index(tmp_path_factory.mktemp("shop"))
    yield cfg, store, rows
    store.close()
