"""`vitrina finetune` on the tiny catalogue: the loss falls, checkpoint + card, resume, bad images, no test rows."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import encoders.finetune as ft
import encoders.train_data as td
from encoders.augment import mild_view
from encoders.finetune import FinetuneSettings, finetune, retrieval_metrics
from encoders.image import card_path, create_image_encoder
from encoders.train_data import TrainItem, hash_split
from scripts.cmd_finetune import register, training_items
from tests.helpers import make_config, product_rows, write_catalogue
from tests.tiny_models import TEST_ARCH
from vitrina.errors import ConfigError

SETTINGS = FinetuneSettings(arch=TEST_ARCH, epochs=3, batch_size=8, lr=3e-3, warmup_steps=2, workers=1,
                            patience=0, device="cpu", threads=2)


def fake_text(texts: list[str]) -> np.ndarray:
    """A stand-in frozen text tower: each word hashes to a fixed random direction; rows are normalised."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
            out[i] += np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def items_for(catalogue: Path) -> list[TrainItem]:
    rows = product_rows(48)
    return [TrainItem(r["id"], str(catalogue.parent / r["image"]), f"{r['gender']} {r['baseColour']} "
                      f"{r['articleType']}", r["split"], f"{r['articleType']}|{r['gender']}") for r in rows]


def test_loss_falls_and_checkpoint_and_card_are_written(tmp_path: Path, catalogue: Path) -> None:
    out = tmp_path / "models" / "tower.pt"
    res = finetune(items_for(catalogue), fake_text, "fake", FinetuneSettings(**{
        **SETTINGS.__dict__, "epochs": 8}), out, tmp_path / "work", provenance={"command": "test"},
        progress=False)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    assert res.skipped == 0 and res.train_img_per_s > 0
    card = json.loads(card_path(out).read_text())
    assert card["complete"] is True and card["epochs_run"] == 8 and len(card["dev_metrics"]) == 8
    assert card["trained_on"]["train_items"] == 30 and card["trained_on"]["dev_items"] == 9
    assert card["command"] == "test" and card["best_epoch"] == res.best_epoch
    cfg = make_config(tmp_path, image_encoder={"checkpoint": str(out)})
    from tests.helpers import draw_product
    assert create_image_encoder(cfg).encode([draw_product("Red", "Shoes")]).shape == (1, 384)


def test_resume_continues_after_the_last_saved_epoch(tmp_path: Path, catalogue: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    items, out, work = items_for(catalogue), tmp_path / "t.pt", tmp_path / "work"
    real = ft.retrieval_metrics
    evaluated: list[int] = []

    def crash_on_second(*a: Any, **k: Any) -> dict[str, float]:
        evaluated.append(1)
        if len(evaluated) == 2:
            raise KeyboardInterrupt  # the machine dies during epoch 2
        return real(*a, **k)

    monkeypatch.setattr(ft, "retrieval_metrics", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        finetune(items, fake_text, "fake", SETTINGS, out, work, progress=False)
    first = json.loads(card_path(out).read_text())
    assert first["complete"] is False and first["epochs_run"] == 1
    monkeypatch.setattr(ft, "retrieval_metrics", real)
    calls: list[int] = []
    monkeypatch.setattr(ft, "retrieval_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    fresh = items_for(catalogue)  # new string objects, as in a new process: the run is found by value
    res = finetune(fresh, fake_text, "fake", SETTINGS, out, work, resume="require", progress=False)
    assert len(calls) == 2  # epochs 2 and 3 only
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[0] == first["dev_metrics"][0]
    assert json.loads(card_path(out).read_text())["complete"] is True
    # a finished run resumes to nothing new; --restart trains again
    calls.clear()
    finetune(items, fake_text, "fake", SETTINGS, out, work, progress=False)
    assert calls == []
    finetune(items, fake_text, "fake", SETTINGS, out, work, resume="never", progress=False)
    assert len(calls) == 3


def test_an_early_stopped_run_goes_on_when_rerun_with_more_patience(tmp_path: Path, catalogue: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([0.5, 0.4, 0.3, 0.6, 0.2])  # dev gets worse after epoch 1, then best at epoch 4
    monkeypatch.setattr(ft, "selection_score", lambda metrics: next(scores))
    settings = FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 5, "patience": 2})
    items, out, work = items_for(catalogue), tmp_path / "t.pt", tmp_path / "work"
    first = finetune(items, fake_text, "fake", settings, out, work, progress=False)
    assert [h["epoch"] for h in first.history] == [1, 2, 3] and first.best_epoch == 1  # stopped early
    more = FinetuneSettings(**{**settings.__dict__, "patience": 3})
    res = finetune(items, fake_text, "fake", more, out, work, resume="require", progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5] and res.best_epoch == 4


def test_resume_required_but_absent_is_an_error(tmp_path: Path, catalogue: Path) -> None:
    with pytest.raises(ConfigError, match="resume"):
        finetune(items_for(catalogue), fake_text, "fake", SETTINGS, tmp_path / "t.pt", tmp_path / "w",
                 resume="require", progress=False)


def test_views_out_of_range_are_refused_before_training(tmp_path: Path, catalogue: Path) -> None:
    for bad in ({"view_zoom_out": 0.5}, {"view_background": 1.5}):
        settings = FinetuneSettings(**{**SETTINGS.__dict__, "augment": "strong", **bad})
        with pytest.raises(ConfigError, match="view_zoom_out"):
            finetune(items_for(catalogue), fake_text, "fake", settings, tmp_path / "t.pt", tmp_path / "w",
                     progress=False)
    assert not (tmp_path / "t.pt").exists()


def test_bad_image_skipped_and_test_rows_never_read(tmp_path: Path, catalogue: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    items = items_for(catalogue)
    bad = next(it for it in items if it.split == "train")
    Path(bad.image).write_bytes(b"\xff\xd8 this is not a jpeg")
    opened: list[str] = []
    real = td.decode_image
    monkeypatch.setattr(td, "decode_image", lambda p, s: opened.append(p) or real(p, s))
    res = finetune(items, fake_text, "fake", dataclass_replace(epochs=1), tmp_path / "t.pt", tmp_path / "w",
                   progress=False)
    assert res.skipped == 1
    card = json.loads(card_path(tmp_path / "t.pt").read_text())
    assert card["trained_on"]["skipped_images"] == 1 and card["trained_on"]["skipped_examples"] == [bad.id]
    test_images = {it.image for it in items if it.split == "test"}
    assert opened and not test_images & set(opened)


def test_cli_reads_train_and_dev_only_and_trains(tmp_path: Path, catalogue: Path) -> None:
    for r in product_rows(48):  # a test row's image is broken: reading it would count a skip
        if r["split"] == "test":
            (catalogue.parent / r["image"]).write_bytes(b"broken")
    cfg = make_config(tmp_path, catalogue, image_encoder={"arch": TEST_ARCH},
                      finetune={"epochs": 1, "batch_size": 8, "workers": 1, "label_fields": ("articleType",)})
    items, counts = training_items(cfg)
    assert counts["test_excluded"] == 9 and {it.split for it in items} == {"train", "dev"}
    assert {it.label for it in items} <= {"Tshirts", "Shoes", "Watches", "Handbags", "Jeans", "Caps"}
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--no-progress", "--erase", "0.25", "--label-smoothing", "0.1"])
    assert args.func(cfg, args) == 0
    card = json.loads(card_path(cfg.finetune.output).read_text())
    assert card["settings"]["erase"] == 0.25 and card["settings"]["label_smoothing"] == 0.1
    assert card["settings"]["crop_scale_min"] == cfg.finetune.crop_scale_min
    assert card["trained_on"]["skipped_images"] == 0 and card["trained_on"]["test_excluded"] == 9
    assert len(card["trained_on"]["catalogue_sha256"]) == 64


def test_hash_split_follows_the_myntra_rule() -> None:
    # ids and splits as published in the fashion catalogue (split = sha256(id) % 10: 0 test, 1 dev, else train)
    known = {"1163": "train", "1164": "train", "1528": "dev", "1552": "dev", "1549": "test", "1563": "test"}
    assert {i: hash_split(i) for i in known} == known
    counts = {s: 0 for s in ("train", "dev", "test")}
    for i in range(5000):
        counts[hash_split(f"{i:010d}")] += 1
    assert 350 < counts["test"] < 650 and 350 < counts["dev"] < 650


def test_catalogue_without_split_column_uses_the_hash_split(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "split"} for r in product_rows(40)]
    cat = write_catalogue(tmp_path / "hm", rows)
    cfg = make_config(tmp_path, cat).replace(catalogue={"split": ""})
    items, counts = training_items(cfg)
    assert counts["hash_split"] == 40
    assert all(it.split == hash_split(it.id) != "test" for it in items)
    assert counts["test_excluded"] == sum(hash_split(r["id"]) == "test" for r in rows)


def test_also_trains_on_another_shops_train_photos_only(tmp_path: Path, catalogue: Path) -> None:
    # another shop in another schema, no split column: its train rows join, its dev and test rows never do
    rows = [{"article_id": f"{i:010d}", "prod_name": f"item {i}", "product_type_name": "Sweater",
             "image": f"images/{i}.jpg", "articleType": "Sweaters"} for i in range(40)]
    write_catalogue(tmp_path / "hm", rows)
    (tmp_path / "configs").mkdir()
    other = tmp_path / "configs" / "shop.toml"
    other.write_text('[catalogue]\npath = "../hm/products.csv"\nid = "article_id"\ntitle = "prod_name"\n'
                     'image = "image"\nsplit = ""\ntext_fields = ["prod_name", "product_type_name"]\nkeyword_fields = ["prod_name"]\n')
    cfg = make_config(tmp_path, catalogue, finetune={"label_fields": ("articleType", "gender"), "also": (str(other),)})
    items, counts = training_items(cfg)
    mine = [it for it in items if not it.id.startswith("shop:")]
    theirs = [it for it in items if it.id.startswith("shop:")]
    assert {it.split for it in mine} == {"train", "dev"} and counts["test_excluded"] == 9
    want = [r for r in rows if hash_split(r["article_id"]) == "train"]
    assert [it.id for it in theirs] == [f"shop:{r['article_id']}" for r in want]
    assert {it.split for it in theirs} == {"train"}
    assert theirs[0].text == f"{want[0]['prod_name']}, Sweater"  # its own text fields, embedded by this config's tower
    assert all(it.label_values == ("", "") for it in theirs)  # not among its attributes: no class (label -1)
    also = counts["also"][str(other)]
    assert also["train_items"] == len(want) and also["dev_and_test_excluded"] == len(rows) - len(want)
    _, labels = td.label_classes(items, len(items), ("articleType", "gender"))
    assert all(label == -1 for it, label in zip(items, labels) if it.id.startswith("shop:"))
    # --also on the command line overrides [finetune].also; a missing file is a clear error
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--also", str(tmp_path / "nope.toml")])
    with pytest.raises(ConfigError, match="no config file"):
        args.func(cfg, args)


def test_retrieval_metrics_against_a_naive_oracle() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((60, 8)).astype(np.float32)
    txt = img + 0.8 * rng.standard_normal((60, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    labels = [str(i % 4) for i in range(60)]
    got = retrieval_metrics(img, txt, labels)
    r, tp, ip = 0.0, 0.0, 0.0
    for q in range(60):
        t_rank = sorted(range(60), key=lambda j: -float(txt[q] @ img[j]))[:10]
        i_rank = sorted((j for j in range(60) if j != q), key=lambda j: -float(img[q] @ img[j]))[:10]
        r += q in t_rank
        tp += sum(labels[j] == labels[q] for j in t_rank) / 10
        ip += sum(labels[j] == labels[q] for j in i_rank) / 10
    assert got == pytest.approx({"t2i_recall@10": r / 60, "t2i_p@10": tp / 60, "i2i_p@10": ip / 60})


def dataclass_replace(**changes: Any) -> FinetuneSettings:
    import dataclasses

    return dataclasses.replace(SETTINGS, **changes)


def test_time_budget_anneals_and_stops_the_run(tmp_path: Path, catalogue: Path) -> None:
    res = finetune(items_for(catalogue), fake_text, "fake", dataclass_replace(epochs=50, time_budget_min=0.002),
                   tmp_path / "t.pt", tmp_path / "w", progress=False)
    # stopped by the budget: mid-epoch (that epoch is marked partial) or, on a fast machine, at an epoch boundary
    assert 1 <= res.epochs_run < 50
    assert sum(h["seconds"] for h in res.history) >= 0.95 * 0.002 * 60
    assert all(not h["partial"] for h in res.history[:-1])
    assert json.loads(card_path(tmp_path / "t.pt").read_text())["complete"] is True


def test_lr_factor_warms_up_then_follows_the_slower_of_steps_and_time() -> None:
    assert ft.lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert ft.lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert ft.lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert ft.lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert ft.lr_factor(10, 10, 100, time_progress=0.5) == pytest.approx(0.5)
    assert ft.lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_from_an_existing_checkpoint_starts_from_its_weights(tmp_path: Path, catalogue: Path) -> None:
    from tests.helpers import draw_product
    from tests.tiny_models import write_tiny_checkpoint

    start = write_tiny_checkpoint(tmp_path / "start.pt", seed=5)
    out = tmp_path / "out.pt"
    finetune(items_for(catalogue), fake_text, "fake", dataclass_replace(
        arch="vitrina-vit-tiny", start_from=str(start), epochs=1, lr=1e-9), out, tmp_path / "w", progress=False)
    assert json.loads(card_path(out).read_text())["arch"] == TEST_ARCH  # the checkpoint's arch wins
    photo = [draw_product("Blue", "Caps")]
    a = create_image_encoder(make_config(tmp_path, image_encoder={"checkpoint": str(start)})).encode(photo)
    b = create_image_encoder(make_config(tmp_path, image_encoder={"checkpoint": str(out)})).encode(photo)
    assert float(a[0] @ b[0]) > 0.999
    fresh = create_image_encoder(make_config(tmp_path, image_encoder={
        "checkpoint": str(write_tiny_checkpoint(tmp_path / "other.pt", seed=6))})).encode(photo)
    assert float(a[0] @ fresh[0]) < 0.99  # a different init is told apart


def test_label_head_learns_the_label_fields_and_ships_in_the_checkpoint(tmp_path: Path, catalogue: Path) -> None:
    rows = {r["id"]: r for r in product_rows(48)}
    items = [TrainItem(**{**it.__dict__, "label_values": (rows[it.id]["articleType"],)})
             for it in items_for(catalogue)]  # ~7 train items per type: enough for LABEL_MIN_COUNT
    settings = FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 6, "label_fields": ("articleType",),
                                   "label_weight": 1.0})
    train = [it for it in items if it.split == "train"]
    classes, labels = td.label_classes(train + [it for it in items if it.split != "train"], len(train),
                                       settings.label_fields)
    assert classes and all(sum(it.label_values == c for it in train) >= td.LABEL_MIN_COUNT for c in classes)
    out = tmp_path / "tower.pt"
    res = finetune(items, fake_text, "fake", settings, out, tmp_path / "work", progress=False)
    assert all("label_acc" in h for h in res.history)
    assert all(0.0 <= h["label_acc"] <= 1.0 for h in res.history)  # (the tiny tower is too weak to learn 4
    # shapes from 29 photos; on the real catalogue the card's dev label_acc is the evidence)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    card = json.loads(card_path(out).read_text())
    assert card["label_head"] == {"fields": ["articleType"], "classes": len(classes)}
    assert "label_acc" in card["best_dev_metrics"] and "label head" in card["objective"]
    cfg = make_config(tmp_path, image_encoder={"checkpoint": str(out)})
    enc = create_image_encoder(cfg)
    assert enc.labels is not None and enc.labels.classes == classes
    from tests.helpers import draw_product
    read = enc.labels.predict(enc.encode([draw_product("Red", "Shoes")])[0])
    assert set(read) == {"articleType"} and all(0.0 < p <= 1.0 + 1e-6 for _, p in read.values())


def test_label_loss_ignores_unlabelled_rows() -> None:
    import torch

    feats = torch.randn(4, 8, requires_grad=True)
    protos, log_scale = torch.randn(3, 8), torch.tensor(2.0)
    none = ft.label_loss(feats, protos, log_scale, torch.tensor([-1, -1, -1, -1]))
    assert float(none) == 0.0
    some = ft.label_loss(feats, protos, log_scale, torch.tensor([0, -1, 2, -1]))
    f = torch.nn.functional.normalize(feats[[0, 2]], dim=-1) @ torch.nn.functional.normalize(protos, dim=-1).T
    want = torch.nn.functional.cross_entropy(log_scale.exp() * f, torch.tensor([0, 2]))
    assert torch.allclose(some, want)
    smooth = ft.label_loss(feats, protos, log_scale, torch.tensor([0, -1, 2, -1]), smoothing=0.1)
    logp = torch.log_softmax(log_scale.exp() * f, dim=-1)
    naive = -(0.9 * logp[[0, 1], [0, 2]] + 0.1 * logp.mean(dim=-1)).mean()
    assert torch.allclose(smooth, naive, atol=1e-5)


def test_mild_view_erases_one_box_per_chosen_photo_and_keeps_shapes() -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.ones(64, 3, 16, 12)
    plain = mild_view(x, gen)
    assert plain.shape == x.shape and torch.allclose(plain, x)  # a crop of a flat image stays flat
    erased = mild_view(x, gen, scale=(0.5, 1.0), erase=0.5)
    blank = (erased == 0.5).all(dim=1)  # (n, h, w): pixels set to grey in every channel
    share = blank.flatten(1).float().mean(dim=1)
    hit = share > 0
    assert 16 <= int(hit.sum()) <= 48  # about half the photos
    assert float(share[hit].min()) >= 0.004 and float(share[hit].max()) <= 0.35
    for mask in blank[hit]:  # one axis-aligned rectangle: its bounding box is all blank
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        assert bool(mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all())


def test_from_a_checkpoint_with_a_label_head_keeps_its_learned_prototypes(tmp_path: Path, catalogue: Path) -> None:
    from encoders.image import load_checkpoint

    rows = {r["id"]: r for r in product_rows(48)}
    items = [TrainItem(**{**it.__dict__, "label_values": (rows[it.id]["articleType"],)})
             for it in items_for(catalogue)]
    settings = FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 4, "lr": 1e-2, "label_fields": ("articleType",),
                                   "label_weight": 1.0})
    first = tmp_path / "first.pt"
    finetune(items, fake_text, "fake", settings, first, tmp_path / "w1", progress=False)
    again = tmp_path / "again.pt"
    finetune(items, fake_text, "fake", dataclass_replace(**{**settings.__dict__, "start_from": str(first),
                                                            "epochs": 1, "lr": 1e-9}),
             again, tmp_path / "w2", progress=False)
    a, b = load_checkpoint(first)["labels"], load_checkpoint(again)["labels"]
    assert a["classes"] == b["classes"] and abs(a["scale"] - b["scale"]) < 1e-3 * a["scale"]
    pa, pb = (torch_unit(x["prototypes"]) for x in (a, b))
    assert float((pa * pb).sum(1).min()) > 0.999
    fresh = tmp_path / "fresh.pt"  # the same short run from random weights: prototypes from the text means
    finetune(items, fake_text, "fake", dataclass_replace(**{**settings.__dict__, "epochs": 1, "lr": 1e-9}),
             fresh, tmp_path / "w3", progress=False)
    pf = torch_unit(load_checkpoint(fresh)["labels"]["prototypes"])
    assert float((pa * pf).sum(1).min()) < 0.99


def torch_unit(x: Any) -> np.ndarray:
    v = x.float().numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_cli_from_a_checkpoint_keeps_its_card_as_history(tmp_path: Path, catalogue: Path) -> None:
    cfg = make_config(tmp_path, catalogue, image_encoder={"arch": TEST_ARCH},
                      finetune={"epochs": 1, "batch_size": 8, "workers": 1})
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    first = Path(cfg.finetune.output)
    args = parser.parse_args(["finetune", "--no-progress"])
    assert args.func(cfg, args) == 0
    second = tmp_path / "second.pt"
    args = parser.parse_args(["finetune", "--no-progress", "--from", str(first), "--output", str(second)])
    assert args.func(cfg, args) == 0
    before = json.loads(card_path(first).read_text())
    after = json.loads(card_path(second).read_text())
    assert after["started_from_card"] == before and "started_from_card" not in before
