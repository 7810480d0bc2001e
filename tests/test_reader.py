"""Catalogue reader: column mapping, CSV and JSONL, exact string ids, bad rows skipped with reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.reader import Product, Skipped, compose_text, image_source, parse_row, read_catalogue
from tests.helpers import make_config, product_rows, write_catalogue
from vitrina.config import Config, load_config
from vitrina.errors import CatalogueError

REPO = Path(__file__).resolve().parent.parent


def split(items: list[Product | Skipped]) -> tuple[list[Product], list[Skipped]]:
    return [i for i in items if isinstance(i, Product)], [i for i in items if isinstance(i, Skipped)]


def test_reads_the_fixture_catalogue(cfg: Config) -> None:
    products, skipped = split(list(read_catalogue(cfg)))
    assert len(products) == 48 and not skipped
    p = products[0]
    assert p.id == "1000" and p.title == "Men Red Tshirts style 0"
    assert p.category == "Tshirts" and p.split == "train"
    assert p.price == pytest.approx(float(product_rows(1)[0]["price"]))
    assert p.attributes == {"gender": "Men", "articleType": "Tshirts", "baseColour": "Red"}
    # words already in the title are not repeated; the text is never empty
    assert p.text == "Men Red Tshirts style 0"
    assert p.keywords == "Men Red Tshirts style 0 Men Red Tshirts"
    assert Path(image_source(cfg, p)).is_file()
    assert p.payload()["price"] == p.price and p.payload()["image"] == "images/1000.jpg"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_bad_rows_are_skipped_with_reasons(tmp_path: Path, fmt: str) -> None:
    rows = product_rows(6)
    rows[1]["title"] = "   "
    rows[2]["price"] = "twelve"
    rows[3]["id"] = rows[0]["id"]
    rows[4]["image"] = ""
    rows.append({**product_rows(8)[7], "id": ""})
    path = write_catalogue(tmp_path / "shop", rows, fmt=fmt)
    if fmt == "jsonl":
        with path.open("a", encoding="utf-8") as f:
            f.write("{not json\n")
            f.write("[1, 2]\n")
    cfg = make_config(tmp_path, path)
    products, skipped = split(list(read_catalogue(cfg)))
    assert [p.id for p in products] == [rows[0]["id"], rows[5]["id"]]
    reasons = {(s.id, s.reason.split(" ")[0]) for s in skipped}
    assert (rows[1]["id"], "empty") in reasons
    assert (rows[2]["id"], "bad") in reasons
    assert (rows[0]["id"], "duplicate") in reasons
    assert (rows[4]["id"], "missing") in reasons
    assert ("", "missing") in reasons
    assert len(skipped) == (7 if fmt == "jsonl" else 5)
    assert all(s.row > 0 for s in skipped)


def test_zero_padded_ids_are_kept_exactly(tmp_path: Path) -> None:
    rows = product_rows(3)
    for r, new in zip(rows, ["0111565001", "007", "12.50"]):
        r["id"] = new
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", rows, images=False))
    assert [p.id for p in split(list(read_catalogue(cfg)))[0]] == ["0111565001", "007", "12.50"]
    jl = write_catalogue(tmp_path / "jl", rows, fmt="jsonl", images=False)
    assert [p.id for p in split(list(read_catalogue(make_config(tmp_path, jl))))[0]] == ["0111565001", "007", "12.50"]


def test_jsonl_numbers_and_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": 42, "title": "Blue Caps", "price": 9.5, "image": "a.jpg"}) + "\n\n"
                    + json.dumps({"id": 43, "title": "Red Caps", "image": "https://example.com/b.jpg"}) + "\n")
    cfg = make_config(tmp_path, path)
    products, skipped = split(list(read_catalogue(cfg)))
    assert not skipped and [p.id for p in products] == ["42", "43"]
    assert products[0].price == 9.5 and products[1].price is None and products[0].attributes == {}
    assert image_source(cfg, products[1]) == "https://example.com/b.jpg"
    assert image_source(cfg, products[0]) == str(tmp_path / "a.jpg")
    based = cfg.replace(catalogue={"image_base": str(tmp_path / "pics")})
    assert image_source(based, products[0]) == str(tmp_path / "pics" / "a.jpg")


def test_unreadable_file_and_missing_column_raise(tmp_path: Path, cfg: Config) -> None:
    with pytest.raises(CatalogueError, match="not found"):
        read_catalogue(cfg.replace(catalogue={"path": str(tmp_path / "nope.csv")}))
    with pytest.raises(CatalogueError, match="'colour'"):
        read_catalogue(cfg.replace(catalogue={"attributes": ("colour",)}))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CatalogueError, match="empty"):
        read_catalogue(cfg.replace(catalogue={"path": str(empty)}))
    odd = tmp_path / "cat.xml"
    odd.write_text("<x/>")
    with pytest.raises(CatalogueError, match="format"):
        read_catalogue(cfg.replace(catalogue={"path": str(odd)}))


def test_numeric_attributes_and_description_text(tmp_path: Path) -> None:
    cfg = make_config(tmp_path).replace(catalogue={"attributes": ("year",), "numeric": ("year",),
                                                   "description": "desc", "text_fields": ("title", "colour", "desc")})
    cat = cfg.catalogue
    ok = parse_row(cat, {"id": "1", "title": "Jeans", "image": "x.jpg", "year": "2011", "desc": "Soft denim.",
                         "colour": "Blue"})
    assert isinstance(ok, Product) and ok.attributes == {"year": 2011.0}
    assert ok.text == "Jeans, Blue — Soft denim." and ok.description == "Soft denim."
    bad = parse_row(cat, {"id": "2", "title": "Jeans", "image": "x.jpg", "year": "soon"})
    assert isinstance(bad, Skipped) and "year" in bad.reason
    assert isinstance(parse_row(cat, {"id": "3", "title": "J", "image": "x", "price": "-1"}), Skipped)
    assert isinstance(parse_row(cat, {"id": "4", "title": "J", "image": "x", "price": "nan"}), Skipped)
    assert compose_text({"a": "Women Shoes", "b": "Men"}, ["a", "b"], []) == "Women Shoes, Men"


@pytest.mark.parametrize("config, first_id", [("config.toml", "1163"), ("configs/hm.toml", "0111565001")])
def test_shipped_configs_read_the_real_catalogues(config: str, first_id: str) -> None:
    cfg = load_config(REPO / config, env={})
    if not Path(cfg.catalogue.path).is_file():
        pytest.skip("real data not present")
    items = read_catalogue(cfg)
    first = next(items)
    assert isinstance(first, Product) and first.id == first_id
    assert Path(image_source(cfg, first)).is_file()
