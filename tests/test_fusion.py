"""fuse / fuse_batch against a naive per-row numpy oracle, plus validation and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from encoders.fusion import fuse, fuse_batch
from vitrina.errors import BadInput


def oracle(text: np.ndarray, image: np.ndarray | None, wt: float, wi: float) -> np.ndarray:
    """The definition, written out one row at a time in float64."""
    t = [float(v) for v in text]
    tn = math.sqrt(sum(v * v for v in t))
    t = [v / tn for v in t]
    if image is None:
        return np.array(t)
    im = [float(v) for v in image]
    inorm = math.sqrt(sum(v * v for v in im))
    im = [v / inorm for v in im] if inorm > 0 else [0.0] * len(im)
    s = [wt * a + wi * b for a, b in zip(t, im)]
    sn = math.sqrt(sum(v * v for v in s))
    if sn <= 1e-12:
        return np.array(t)
    return np.array([v / sn for v in s])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.7, 0.3), (1.0, 0.0), (0.0, 1.0), (3.0, 1.0)])
def test_fuse_batch_matches_oracle(seed: int, weights: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    n, d = 17, 24
    texts = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))
    images = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))
    absent = rng.random(n) < 0.3
    images_nan = images.copy()
    images_nan[absent] = np.nan
    got_nan = fuse_batch(texts, images_nan, *weights)
    got_mask = fuse_batch(texts, images, *weights, present=~absent)
    assert got_nan.dtype == np.float32 and got_nan.shape == (n, d)
    for i in range(n):
        want = oracle(texts[i], None if absent[i] else images[i], *weights)
        np.testing.assert_allclose(got_nan[i], want, atol=1e-6)
        np.testing.assert_allclose(got_mask[i], want, atol=1e-6)
        np.testing.assert_allclose(fuse(texts[i], None if absent[i] else images[i], *weights), want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got_nan, axis=1), 1.0, atol=1e-6)


def test_image_absent_gives_text_alone() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(size=8)
    np.testing.assert_allclose(fuse(t, None, 0.2, 0.8), t / np.linalg.norm(t), atol=1e-6)
    out = fuse_batch(rng.normal(size=(3, 8)), None, 0.5, 0.5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_weights_are_relative_and_image_moves_result() -> None:
    rng = np.random.default_rng(2)
    t, i = rng.normal(size=16), rng.normal(size=16)
    np.testing.assert_allclose(fuse(t, i, 1, 1), fuse(t, i, 0.25, 0.25), atol=1e-6)
    tu, iu = t / np.linalg.norm(t), i / np.linalg.norm(i)
    heavy_image = fuse(t, i, 0.1, 0.9)
    heavy_text = fuse(t, i, 0.9, 0.1)
    assert heavy_image @ iu > heavy_text @ iu
    assert heavy_text @ tu > heavy_image @ tu
    # equal weights: the fused vector bisects the two, equally close to both
    eq = fuse(t, i, 0.5, 0.5)
    assert abs(eq @ tu - eq @ iu) < 1e-6


def test_opposite_vectors_fall_back_to_text() -> None:
    t = np.array([1.0, 0.0, 0.0])
    out = fuse(t, -t * 3, 0.5, 0.5)
    np.testing.assert_allclose(out, t, atol=1e-6)


def test_zero_image_with_zero_text_weight_falls_back_to_text() -> None:
    t = np.array([0.0, 2.0, 0.0])
    np.testing.assert_allclose(fuse(t, np.zeros(3), 0.0, 1.0), [0, 1, 0], atol=1e-6)


@pytest.mark.parametrize("weights", [(-0.1, 0.5), (0.5, -1.0), (0.0, 0.0), (math.nan, 0.5), (0.5, math.inf)])
def test_bad_weights_rejected(weights: tuple[float, float]) -> None:
    with pytest.raises(BadInput):
        fuse(np.ones(4), np.ones(4), *weights)
    with pytest.raises(BadInput):
        fuse_batch(np.ones((2, 4)), None, *weights)


def test_bad_shapes_rejected() -> None:
    with pytest.raises(BadInput, match="does not match"):
        fuse(np.ones(4), np.ones(5), 0.5, 0.5)
    with pytest.raises(BadInput, match="does not match"):
        fuse_batch(np.ones((2, 4)), np.ones((3, 4)), 0.5, 0.5)
    with pytest.raises(BadInput, match="1-d"):
        fuse(np.ones((2, 4)), None, 0.5, 0.5)
    with pytest.raises(BadInput, match="2-d"):
        fuse_batch(np.ones(4), None, 0.5, 0.5)
    with pytest.raises(BadInput, match="present"):
        fuse_batch(np.ones((2, 4)), np.ones((2, 4)), 0.5, 0.5, present=np.ones(3, dtype=bool))
    with pytest.raises(BadInput, match="NaN"):
        fuse_batch(np.full((2, 4), np.nan), None, 0.5, 0.5)


def test_reexported_from_package() -> None:
    import encoders

    assert encoders.fuse is fuse and encoders.fuse_batch is fuse_batch
