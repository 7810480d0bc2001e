"""Training views (encoders.augment), the evaluation's alterations and the training pack, on small real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import augment as aug
from encoders.train_data import TrainingData
from encoders.train_pack import quantise_rows, read_pack, write_pack
from evaluation.alterations import ALTERATIONS, alter, product_mask


def white_studio_batch(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n photos of a dark square 'product' (with a white patch inside it) on studio white, and the true masks."""
    x = torch.ones(n, 3, size, size)
    truth = torch.zeros(n, 1, size, size)
    for i in range(n):
        y0, x0 = 4 + i % 3, 6 + i % 4
        x[i, :, y0:y0 + 16, x0:x0 + 14] = torch.tensor([0.2, 0.3 + 0.1 * i, 0.6]).view(3, 1, 1)
        x[i, :, y0 + 6:y0 + 10, x0 + 5:x0 + 9] = 1.0  # a white patch inside the outline stays product
        truth[i, :, y0:y0 + 16, x0:x0 + 14] = 1.0
    return x, truth


def test_product_mask_is_what_the_white_border_does_not_reach() -> None:
    x, truth = white_studio_batch()
    m = aug.product_masks(x)
    assert m.shape == truth.shape and float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    hard = (m > 0.5).float()
    inner = torch.nn.functional.max_pool2d(-truth, 3, 1, 1).neg()  # the product shrunk by one pixel
    outer = torch.nn.functional.max_pool2d(truth, 3, 1, 1)  # grown by one pixel
    assert bool((hard >= inner).all()) and bool((hard <= outer).all())  # right up to the softened edge
    assert float(m[0, 0, 12, 13]) == pytest.approx(1.0)  # the white patch inside the product


def test_strong_views_keep_shape_and_range_and_differ_per_photo() -> None:
    x, _ = white_studio_batch(8)
    gen = torch.Generator().manual_seed(0)
    views = aug.strong_view(x, aug.product_masks(x), gen)
    assert views.shape == x.shape and views.dtype == x.dtype
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert not torch.allclose(views, x)
    again = aug.strong_view(x, aug.product_masks(x), torch.Generator().manual_seed(0))
    assert torch.allclose(views, again)  # seeded: the same views
    first, second = aug.two_views(x, aug.product_masks(x), gen)
    assert first.shape == second.shape == x.shape and not torch.allclose(first, second)


def test_background_replaces_the_studio_white_and_keeps_the_product() -> None:
    x, truth = white_studio_batch(8)
    settings = aug.ViewSettings(zoom=(1.0, 1.0), rotate_deg=0.0, perspective=0.0, background=1.0)
    h = torch.eye(3).repeat(8, 1, 1)  # identity warp: only the background changes
    moved, m = aug.warp(x, aug.product_masks(x), h)
    assert torch.allclose(moved, x, atol=1e-5)
    bg = aug.backgrounds(x, torch.Generator().manual_seed(1))
    pasted = m * moved + (1 - m) * bg
    far = (torch.nn.functional.max_pool2d(truth, 5, 1, 2) == 0).expand_as(x)  # background, away from the edge
    assert torch.allclose(pasted[far], bg[far])
    core = (torch.nn.functional.max_pool2d(-truth, 3, 1, 1).neg() == 1).expand_as(x)
    assert torch.allclose(pasted[core], x[core], atol=1e-5)
    assert settings.background == 1.0


def test_zooming_out_shows_the_product_smaller_on_white() -> None:
    x, truth = white_studio_batch(4)
    h = torch.diag(torch.tensor([2.0, 2.0, 1.0])).repeat(4, 1, 1)  # source window twice the frame
    moved, m = aug.warp(x, truth, h)
    assert float(m.mean()) == pytest.approx(float(truth.mean()) / 4, rel=0.15)
    assert torch.allclose(moved[..., :4, :], torch.ones_like(moved[..., :4, :]), atol=1e-5)  # white margin


def test_view_settings_from_finetune_zoom_further_and_paste_more_often() -> None:
    far = aug.settings_for(2.6, 0.9)
    assert far.zoom == (aug.ViewSettings().zoom[0], 2.6) and far.background == 0.9
    assert far.hue == aug.ViewSettings().hue  # the rest stays the default
    assert aug.settings_for(2.0, 0.6) == aug.ViewSettings()
    for zoom_out, background in ((0.9, 0.5), (2.0, 1.5), (2.0, -0.1)):
        with pytest.raises(ValueError):
            aug.settings_for(zoom_out, background)
    # with no background pasted and zoom-out only, the margin around a shrunk product stays studio white
    x, _ = white_studio_batch(8)
    out = aug.strong_view(x, aug.product_masks(x), torch.Generator().manual_seed(3),
                          aug.ViewSettings(zoom=(2.5, 2.6), rotate_deg=0.0, perspective=0.0, background=0.0,
                                           brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0),
                                           hue=0.0, gamma=(1.0, 1.0), white_balance=0.0, shading=0.0,
                                           greyscale=0.0, blur=0.0, noise=0.0, downsample=0.0))
    assert float(out[..., :3, :].min()) > 0.9


def test_photometric_changes_light_within_range() -> None:
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    dark = aug.photometric(x, aug.ViewSettings(brightness=(0.5, 0.5), contrast=(1.0, 1.0), saturation=(1.0, 1.0),
                                              hue=0.0, gamma=(1.0, 1.0), white_balance=0.0, shading=0.0,
                                              greyscale=0.0, blur=0.0, noise=0.0, downsample=0.0),
                           torch.Generator().manual_seed(0))
    assert torch.allclose(dark, (x * 0.5).clamp(1e-4, 1), atol=1e-4)
    grey = aug.photometric(x, aug.ViewSettings(greyscale=1.0, noise=0.0), torch.Generator().manual_seed(0))
    assert float(grey.min()) >= 0 and float(grey.max()) <= 1
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    noisy = aug.photometric(x, aug.ViewSettings(noise=1.0), torch.Generator().manual_seed(0))
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1 and not torch.allclose(noisy, x)


def test_hue_rotation_by_a_full_turn_is_identity() -> None:
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(aug._rotate_hue(x, torch.ones(4)), x, atol=1e-4)
    assert not torch.allclose(aug._rotate_hue(x, torch.full((4,), 0.25)), x, atol=1e-2)


def _studio_photo(size: tuple[int, int] = (60, 80)) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste((180, 30, 40), (15, 20, 45, 65))
    return img


def test_evaluation_alterations_are_seeded_and_keep_the_photo_size() -> None:
    img = _studio_photo()
    for name in ALTERATIONS:
        a, b = alter(img, name, 0, "42"), alter(img, name, 0, "42")
        assert a.size == img.size and a.mode == "RGB"
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
    assert np.array_equal(np.asarray(alter(img, "clean", 0, "1")), np.asarray(img))
    assert not np.array_equal(np.asarray(alter(img, "combined", 0, "1")), np.asarray(alter(img, "combined", 1, "1")))
    with pytest.raises(ValueError):
        alter(img, "melt", 0, "1")


def test_evaluation_mask_and_background_move_the_product_off_white() -> None:
    img = _studio_photo()
    mask = np.asarray(product_mask(img)) > 127
    assert mask[40, 30] and not mask[5, 5] and abs(int(mask.sum()) - 30 * 45) < 200
    out = np.asarray(alter(img, "background", 0, "7")).astype(int)
    assert (out.min(axis=2) >= 235).mean() < 0.2  # the studio white is gone
    product = (np.abs(out - np.array([180, 30, 40])).max(axis=2) < 16).sum() / (30 * 45)
    assert 0.1 < product < 0.7  # the product is there, at 45-75% of its size in each direction


def test_pack_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 12, 16
    text = rng.standard_normal((n, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    pixels = np.zeros((n, 16, 16, 3), np.uint8)
    for i in range(n):
        pixels[i, 4:12, 4:12] = (20 * i, 100, 200 - 10 * i)
    data = TrainingData(pixels=pixels, text_emb=text, tid=np.arange(n), distinct_texts=[f"t{i}" for i in range(n)],
                        tr_idx=np.array([0, 1, 2, 3, 5, 6, 7, 8]), dv_idx=np.array([9, 10, 11]),
                        dev_labels=["a", "b", "a"], classes=[("x",), ("y",)], labels=np.array([0, 1] * 6),
                        skipped=["4"], key="k", ids=[str(i) for i in range(n)])
    back = read_pack(write_pack(data, tmp_path / "p.npz"), workers=2)
    rows = np.concatenate([data.tr_idx, data.dv_idx])
    assert back.ids == [str(i) for i in rows]
    assert list(back.tr_idx) == list(range(8)) and list(back.dv_idx) == [8, 9, 10]
    assert np.abs(back.pixels.astype(int) - pixels[rows].astype(int)).mean() < 3  # lossy, close
    assert np.all(np.sum(back.text_emb * text[rows], axis=1) > 0.999)
    assert list(back.labels) == list(data.labels[rows]) and back.classes == data.classes and back.skipped == ["4"]
    assert back.dev_labels == ["a", "b", "a"] and back.key == "k"


def test_quantised_rows_keep_their_direction() -> None:
    rows = np.random.default_rng(1).standard_normal((50, 384)).astype(np.float32)
    q, scale = quantise_rows(rows)
    back = q.astype(np.float32) * scale[:, None]
    cos = np.sum(back * rows, axis=1) / np.linalg.norm(back, axis=1) / np.linalg.norm(rows, axis=1)
    assert q.dtype == np.int8 and cos.min() > 0.999


def test_a_file_that_is_not_a_pack_is_refused(tmp_path: Path) -> None:
    from vitrina.errors import ConfigError

    bad = tmp_path / "x.npz"
    np.savez(bad, meta=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    with pytest.raises(ConfigError):
        read_pack(bad)
    (tmp_path / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError):
        read_pack(tmp_path / "y.npz")


def test_stretch_levels_restores_a_dark_flat_photo_and_leaves_a_studio_shot() -> None:
    from encoders.photo import stretch_levels

    rng = np.random.default_rng(3)
    studio = np.full((32, 32, 3), 255, np.uint8)
    studio[8:24, 8:24] = rng.integers(0, 120, (16, 16, 3))
    assert np.abs(stretch_levels(studio).astype(int) - studio.astype(int)).mean() < 6
    dark = (studio.astype(np.float32) * 0.6 + 20).astype(np.uint8)  # darker and flatter
    back = stretch_levels(dark)
    assert back.max() == 255 and back.min() <= 5
    assert np.abs(back.astype(int) - studio.astype(int)).mean() < 8
    flat = np.full((8, 8, 3), 90, np.uint8)
    assert np.array_equal(stretch_levels(flat), flat)


def test_trim_borders_crops_to_the_content_with_a_margin() -> None:
    from encoders.photo import trim_borders

    img = Image.new("RGB", (100, 150), (236, 236, 236))  # a packshot's light grey
    img.paste((20, 40, 160), (30, 40, 70, 120))
    out = trim_borders(img)
    assert out.size == (40 + 2 * 2, 80 + 2 * 3)  # 4% of the content's size kept around it
    a = np.asarray(out)
    assert tuple(a[out.height // 2, out.width // 2]) == (20, 40, 160)
    full = Image.new("RGB", (50, 50), (200, 10, 10))
    full.paste((0, 0, 0), (0, 0, 50, 5))  # content reaches the edges: nothing to cut
    assert trim_borders(full).size == (50, 50)
    blank = Image.new("RGB", (30, 30), (255, 255, 255))
    assert trim_borders(blank).size == (30, 30)
