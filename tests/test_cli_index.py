"""`vitrina reindex | upsert | delete | info` through scripts.cli.main, including bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.cli import main
from search.store.factory import open_store
from tests.helpers import make_config, product_rows, write_catalogue
from tests.test_indexer import write_config
from vitrina.config import Config


@pytest.fixture
def config_file(tmp_path: Path, cfg: Config) -> Path:
    return write_config(tmp_path / "vitrina.toml", cfg)


def count(cfg: Config) -> int:
    store = open_store(cfg)
    try:
        return store.count(cfg.store.alias)
    finally:
        store.close()


def test_reindex_info_upsert_delete(config_file: Path, cfg: Config, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    c = ["--config", str(config_file)]
    assert main([*c, "info"]) == 0
    assert "(none: run `vitrina reindex`)" in capsys.readouterr().out

    assert main([*c, "reindex", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "indexed  48 items" in out and "items/s" in out and "skipped  0" in out
    assert count(cfg) == 48

    assert main([*c, "info"]) == 0
    out = capsys.readouterr().out
    assert "points       48" in out and "NOT TRAINED" in out and str(config_file) in out

    item = {"id": "0042", "title": "Women Green Caps", "image": "images/1000.jpg", "price": "12.5",
            "gender": "Women", "articleType": "Caps", "baseColour": "Green"}
    assert main([*c, "upsert", json.dumps(item)]) == 0
    assert "upserted 1 item(s)" in capsys.readouterr().out
    store = open_store(cfg)
    try:
        hit = store.retrieve(cfg.store.alias, ["0042"])[0]
        assert hit.id == "0042" and hit.payload["price"] == 12.5 and hit.payload["baseColour"] == "Green"
        assert store.retrieve(cfg.store.alias, ["42"]) == []
    finally:
        store.close()
    assert count(cfg) == 49

    items = tmp_path / "more.jsonl"
    items.write_text(json.dumps({**item, "id": "0043"}) + "\n" + json.dumps({**item, "id": "0044", "title": ""})
                     + "\n" + json.dumps({**item, "id": "1000", "title": "Renamed"}) + "\n")
    assert main([*c, "upsert", "--file", str(items)]) == 1  # one row skipped: non-zero, the rest written
    out = capsys.readouterr().out
    assert "upserted 2 item(s)" in out and "'0044'" in out and "empty title" in out
    assert count(cfg) == 50

    assert main([*c, "delete", "0042", "0043"]) == 0
    assert "deleted 2 item(s)" in capsys.readouterr().out
    assert main([*c, "delete", "1001", "nope"]) == 1
    assert "not found: nope" in capsys.readouterr().out
    assert count(cfg) == 47

    assert main([*c, "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["points"] == 47 and info["last_reindex"]["indexed"] == 48


def test_bad_input_exits_non_zero_with_a_message(config_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    c = ["--config", str(config_file)]
    assert main([*c, "upsert", '{"id": "1", "title": "x"']) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([*c, "upsert", '{"id": "1", "title": "Red", "image": "images/1000.jpg"}']) == 2
    assert "run `vitrina reindex` first" in capsys.readouterr().err
    assert main([*c, "upsert"]) == 2
    assert "not both or neither" in capsys.readouterr().err
    assert main([*c, "delete", " "]) == 2
    assert main([*c, "reindex", "--limit", "-1"]) == 2
    assert ">= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*c, "delete"])
    assert e.value.code == 2


def test_reindex_with_a_broken_catalogue_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat = write_catalogue(tmp_path / "shop", product_rows(4), images=False)
    cfg = make_config(tmp_path, cat).replace(catalogue={"attributes": ("colour",)})
    config = write_config(tmp_path / "bad.toml", cfg)
    assert main(["--config", str(config), "reindex", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'colour'" in err and "not in the file" in err
    missing = write_config(tmp_path / "missing.toml", cfg.replace(catalogue={"path": str(tmp_path / "no.csv")}))
    assert main(["--config", str(missing), "reindex"]) == 2
    assert "catalogue file not found" in capsys.readouterr().err
