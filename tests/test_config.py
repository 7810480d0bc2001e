"""Config: file parsing, environment overrides, path resolution, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitrina.config import Config, load_config
from vitrina.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_parse_and_resolve_paths() -> None:
    fashion = load_config(REPO / "config.toml", env={})
    assert fashion.catalogue.id == "id" and fashion.store.backend == "edge"
    assert Path(fashion.catalogue.path) == (REPO / "../shared/data/fashion/products.csv").resolve()
    assert Path(fashion.data.dir) == REPO / "var"
    hm = load_config(REPO / "configs" / "hm.toml", env={})
    assert hm.catalogue.id == "article_id" and hm.catalogue.description == "detail_desc"
    assert Path(hm.catalogue.path) == (REPO / "../shared/data/hm/articles.csv").resolve()
    assert hm.store.alias != fashion.store.alias
    # a tuple of paths resolves each against the file's folder, as one path does
    assert fashion.finetune.also == (str(REPO / "configs" / "hm.toml"),)
    assert load_config(REPO / "configs" / "hm.toml", env={"VITRINA_FINETUNE__ALSO": "../config.toml"}
                       ).finetune.also == (str(REPO / "config.toml"),)


def test_env_overrides_every_type(tmp_path: Path) -> None:
    env = {
        "VITRINA_STORE__BACKEND": "qdrant", "VITRINA_STORE__KEEP": "5", "VITRINA_FUSION__IMAGE_WEIGHT": "0.25",
        "VITRINA_RUNTIME__BF16": "false", "VITRINA_CATALOGUE__FILTERABLE": "gender, brand",
        "VITRINA_WEB__API_KEYS": '["a", "b"]', "VITRINA_DATA__DIR": "rel",
    }
    file = tmp_path / "c.toml"
    file.write_text("[store]\nbackend = 'edge'\nkeep = 1\n")
    cfg = load_config(file, env=env)
    assert cfg.store.backend == "qdrant" and cfg.store.keep == 5
    assert cfg.fusion.image_weight == 0.25 and cfg.runtime.bf16 is False
    assert cfg.catalogue.filterable == ("gender", "brand") and cfg.web.api_keys == ("a", "b")
    assert Path(cfg.data.dir) == tmp_path / "rel"  # relative to the config file's folder


def test_vitrina_config_env_chooses_file(tmp_path: Path) -> None:
    file = tmp_path / "other.toml"
    file.write_text("[store]\nalias = 'shop2'\n")
    assert load_config(env={"VITRINA_CONFIG": str(file)}).store.alias == "shop2"


@pytest.mark.parametrize("text, match", [
    ("[stor]\nx = 1\n", "unknown section"),
    ("[store]\nbackendd = 'edge'\n", "unknown key"),
    ("[store]\nkeep = 'many'\n", "expected an integer"),
    ("[runtime]\nbf16 = 'maybe'\n", "expected true or false"),
    ("[catalogue]\nfilterable = 3\n", "expected a list"),
    ("[store\n", "not valid TOML"),
    ("store = 3\n", "must be a table"),
    ("[live]\ntext_precision = 'int4'\n", "text_precision must be one of"),
    ("[text_encoder]\nprecision = 'fp16'\n", r"\[text_encoder\].precision must be one of"),
    ("[search]\nquery_precision = 'int4'\n", r"\[search\].query_precision must be one of"),
    ("[search]\nphoto_runtime = 'tensorrt'\n", r"\[search\].photo_runtime must be one of"),
    ("[image_encoder]\nruntime = 'jax'\n", r"\[image_encoder\].runtime must be one of"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(file, env={})


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VITRINA_STORE__KEEP"):
        load_config(None, env={"VITRINA_STORE__KEEP": "x"})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_config_is_frozen_and_replace_copies() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.store.backend = "qdrant"  # type: ignore[misc]
    other = cfg.replace(store={"backend": "qdrant"})
    assert other.store.backend == "qdrant" and cfg.store.backend == "edge"
