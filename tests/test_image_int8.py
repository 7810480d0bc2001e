"""The indexer's image tower in 8 bits ([indexer].image_int8): calibrated once on the catalogue's training photos,
cached, its vectors close to the torch tower's but its own, a new model stamp, and the torch tower kept when the
quantised one falls short."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from indexer.pipeline import reindex
from search.store.factory import open_store
from tests.tiny_models import RESNET_ARCH, write_tiny_checkpoint
from vitrina.config import Config

pytest.importorskip("onnxruntime")


def int8_config(cfg: Config) -> Config:
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint), arch=RESNET_ARCH)
    return cfg.replace(image_encoder={"arch": RESNET_ARCH, "flip_average": True},
                       indexer={"batch_size": 16, "image_int8": True, "calibration_photos": 12})


def int8_models(cfg: Config) -> list[Path]:
    return sorted((cfg.data_dir / "models").glob("image-int8-*.onnx"))


def test_calibration_takes_evenly_spread_photos_of_rows_not_held_back(cfg: Config) -> None:
    from encoders import create_image_encoder
    from indexer.embed import calibration_photos, index_side, tower_runtime
    from indexer.reader import Product, read_catalogue
    from vitrina.images import load_image

    c = int8_config(cfg)
    enc = create_image_encoder(tower_runtime(index_side(c)))
    train = [p for p in read_catalogue(c) if isinstance(p, Product) and p.split == "train"]
    assert 0 < len(train) < 48  # the fixture also holds dev and test rows, which calibration must not read
    every = calibration_photos(c, enc, 1000)
    assert every.shape == (len(train), *enc.image_size, 3) and every.dtype == np.uint8
    base = Path(c.catalogue.path).parent
    want = [enc.pixels(load_image(p.image, base, c.indexer, fit=enc.decode_size)) for p in train]
    np.testing.assert_array_equal(every, np.stack(want))  # those photos, in catalogue order
    some = calibration_photos(c, enc, 5)
    assert len(some) == 5
    np.testing.assert_array_equal(some[0], every[0])  # the first and the last training photo, and between
    np.testing.assert_array_equal(some[-1], every[-1])
    np.testing.assert_array_equal(some, calibration_photos(c, enc, 5))
    # without a split column, the rows `vitrina finetune` would hold back by id are left out too
    from encoders.train_data import hash_split

    no_split = c.replace(catalogue={"split": ""})
    kept = [p for p in read_catalogue(no_split) if isinstance(p, Product) and hash_split(p.id) == "train"]
    assert 0 < len(kept) < 48
    want = [enc.pixels(load_image(p.image, base, c.indexer, fit=enc.decode_size)) for p in kept]
    np.testing.assert_array_equal(calibration_photos(no_split, enc, 1000), np.stack(want))


def test_the_index_embeds_photos_with_the_cached_8_bit_tower(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    from encoders import create_image_encoder
    from indexer import embed
    from vitrina.images import load_image

    c = int8_config(cfg)
    assert embed.model_stamp(c, "t") != embed.model_stamp(c.replace(indexer={"image_int8": False}), "t")
    enc, why = embed.load_image_encoder(c)
    assert enc is not None and enc._onnx is not None, why
    assert len(int8_models(c)) == 1
    torch_enc = create_image_encoder(embed.tower_runtime(embed.index_side(c)))
    assert torch_enc._onnx is None and enc.twin()._onnx is enc._onnx  # the shared torch tower is left as it was

    assert reindex(c, progress=False).indexed == 48
    store = open_store(c)
    try:
        got = store.retrieve(c.store.alias, ["1000", "1001", "1002"], with_vectors=True)
    finally:
        store.close()
    photos = [load_image(f"images/{h.id}.jpg", Path(c.catalogue.path).parent, c.indexer) for h in got]
    fp32 = create_image_encoder(embed.tower_runtime(embed.index_side(c)).replace(runtime={"bf16": False}))
    want = fp32.encode(photos)
    stored = np.stack([h.vectors["image"] for h in got])
    cosine = np.sum(stored * want, axis=1)
    assert float(cosine.min()) > 0.98  # the 8-bit tower's vectors ...
    assert float(np.abs(stored - want).max()) > 1e-4  # ... and not the float tower's

    def no_calibration(*_: object) -> np.ndarray:
        raise AssertionError("a cached 8-bit tower must not be calibrated again")

    monkeypatch.setattr(embed, "calibration_photos", no_calibration)
    again, _ = embed.load_image_encoder(c)
    from encoders.image_onnx import OnnxImageEncoder

    assert isinstance(again, OnnxImageEncoder)  # opened from the file and its sidecar, with no torch tower built
    assert again.name == enc.name and again.labels is None and again.flip_average
    np.testing.assert_allclose(again.encode(photos), enc.encode(photos), atol=1e-6)
    with embed.Embedder(c, again) as opened, embed.Embedder(c, enc) as built:
        assert opened.stamp == built.stamp  # the same records either way


def test_uploaded_photos_go_through_the_index_s_8_bit_tower_with_photo_runtime_int8(
        cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    from encoders.image_onnx import OnnxImageEncoder
    from search.query.engine import SearchService
    from vitrina.images import load_image

    c = int8_config(cfg).replace(search={"photo_runtime": "int8"})
    with caplog.at_level(logging.WARNING, logger="encoders"):
        before = SearchService(c).image_encoder()  # no 8-bit tower made yet: the fp32 export, with a warning
    assert before._onnx is not None and not int8_models(c)  # the torch tower, exported and run on fp32 ONNX
    assert "no 8-bit tower made yet" in caplog.text
    assert reindex(c, progress=False).indexed == 48
    store = open_store(c)
    try:
        got = store.retrieve(c.store.alias, ["1000", "1001", "1002"], with_vectors=True)
        photos = [load_image(f"images/{h.id}.jpg", Path(c.catalogue.path).parent, c.indexer) for h in got]
        stored = np.stack([h.vectors["image"] for h in got])
        eight = SearchService(c, store=store).image_encoder()
        fp32 = SearchService(c.replace(search={"photo_runtime": "onnx"}), store=store).image_encoder()
    finally:
        store.close()
    assert isinstance(eight, OnnxImageEncoder) and eight is not fp32
    np.testing.assert_allclose(eight.encode(photos), stored, atol=1e-5)  # the index's own vectors
    assert float(np.abs(fp32.encode(photos) - stored).max()) > 1e-4  # the fp32 tower's are not


@pytest.mark.parametrize("failure", ["short", "quantiser"])
def test_a_quantised_tower_that_falls_short_is_not_kept(cfg: Config, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture, failure: str) -> None:
    import onnxruntime.quantization

    from encoders import image_int8
    from indexer.embed import load_image_encoder

    c = int8_config(cfg)
    if failure == "short":
        monkeypatch.setattr(image_int8, "MIN_COSINE", 1.01)
    else:  # the quantiser's graph code meets something it cannot treat (it raises plain assertions)
        def broken(*_: object, **__: object) -> None:
            raise AssertionError

        monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken)
    with caplog.at_level(logging.WARNING, logger="indexer.embed"):
        enc, _ = load_image_encoder(c)
    assert enc is not None and enc._onnx is None  # the torch tower indexes instead
    why = "differs from torch" if failure == "short" else "could not be quantised"
    assert "8-bit image tower is unavailable" in caplog.text and why in caplog.text
    assert int8_models(c) == [] and list((c.data_dir / "models").glob("tmp*")) == []
