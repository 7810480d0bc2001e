"""Shoppers' photos made from catalogue photos: a documented, seeded suite of alterations for evaluation.

Each alteration takes a PIL image and a `random.Random` and returns a new RGB image at the photo's own size.
They are written with PIL, apart from the training views (encoders.augment, torch), and their backgrounds are
kinds training never draws (plaid cloth, a wall-and-floor corner, a wood-like grain), so the suite measures what
generalises rather than what training saw:

| name | what a shopper's photo does |
|---|---|
| clean | the catalogue photo itself |
| crop | only 60-80% of the frame in each direction, anywhere in it |
| rotate | tilted by 5-15 degrees either way, corners filled with the photo's border colour |
| light | darker and flatter: brightness 0.6-0.8, contrast 0.7-0.9 |
| background | the product (masked from the near-white border) at 45-75% of the frame on a coloured background |
| combined | background (55-80%), rotate 3-12 degrees, crop to 80-95%, light, a warm or cool cast, a slight  |
|          | blur and JPEG quality 60-80: a phone snapshot                                                   |
"""

from __future__ import annotations

import io
import math
import random
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

WHITE_LEVEL = 235  # a pixel this bright in every channel can be studio background


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def product_mask(img: Image.Image) -> Image.Image:
    """'L' mask, 255 on the product: every pixel but the near-white ones the border reaches through near-white
    pixels (scipy's connected components of the near-white region that touch the border)."""
    from scipy import ndimage

    a = np.asarray(_rgb(img))
    white = a.min(axis=2) >= WHITE_LEVEL
    parts, _ = ndimage.label(white)
    edge = np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]))
    background = np.isin(parts, edge[edge > 0])
    mask = Image.fromarray(np.where(background, 0, 255).astype(np.uint8))
    return mask.filter(ImageFilter.GaussianBlur(0.6))


def _colour(rng: random.Random, lo: int = 30, hi: int = 225) -> tuple[int, int, int]:
    return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


def background_image(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A coloured background of one of four kinds: flat, plaid cloth, a wall over a floor, wood-like grain."""
    w, h = size
    kind = rng.choice(("flat", "plaid", "corner", "grain"))
    c1, c2 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        out = np.broadcast_to(c1, (h, w, 3))
    elif kind == "plaid":
        period = rng.uniform(0.15, 0.35) * max(w, h)
        bands = ((np.sin(xs / period * 2 * math.pi) > 0.3).astype(np.float32)
                 + (np.sin(ys / period * 2 * math.pi) > 0.3).astype(np.float32)) / 2
        out = c1 + (c2 - c1) * bands[..., None]
    elif kind == "corner":
        horizon = rng.uniform(0.5, 0.8) * h
        shade = 1.0 - 0.3 * (ys / h)
        out = np.where((ys < horizon)[..., None], c1, c2) * shade[..., None]
    else:
        phase = rng.uniform(0, 2 * math.pi)
        rings = np.sin(xs / max(w, 1) * rng.uniform(8, 20) + 3 * np.sin(ys / max(h, 1) * 3 + phase))
        out = c1 * (0.8 + 0.2 * rings[..., None])
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def crop(img: Image.Image, rng: random.Random, lo: float = 0.6, hi: float = 0.8) -> Image.Image:
    """A window of lo-hi of the width and of the height, anywhere in the photo, at the photo's size."""
    img = _rgb(img)
    w, h = img.size
    cw, ch = max(1, round(w * rng.uniform(lo, hi))), max(1, round(h * rng.uniform(lo, hi)))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _border_colour(img: Image.Image) -> tuple[int, int, int]:
    a = np.asarray(img)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))  # type: ignore[return-value]


def rotate(img: Image.Image, rng: random.Random, lo: float = 5.0, hi: float = 15.0) -> Image.Image:
    """Tilted by lo-hi degrees either way; the uncovered corners take the photo's border colour."""
    img = _rgb(img)
    angle = rng.uniform(lo, hi) * rng.choice((-1, 1))
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=_border_colour(img))


def light(img: Image.Image, rng: random.Random, brightness: tuple[float, float] = (0.6, 0.8),
          contrast: tuple[float, float] = (0.7, 0.9)) -> Image.Image:
    """Darker and flatter, as under room light."""
    img = ImageEnhance.Brightness(_rgb(img)).enhance(rng.uniform(*brightness))
    return ImageEnhance.Contrast(img).enhance(rng.uniform(*contrast))


def background(img: Image.Image, rng: random.Random, scale: tuple[float, float] = (0.45, 0.75)) -> Image.Image:
    """The product, masked from its studio white, at `scale` of the frame somewhere on a coloured background."""
    img = _rgb(img)
    w, h = img.size
    mask = product_mask(img)
    s = rng.uniform(*scale)
    pw, ph = max(1, round(w * s)), max(1, round(h * s))
    out = background_image((w, h), rng)
    x0, y0 = rng.randint(0, w - pw), rng.randint(0, h - ph)
    out.paste(img.resize((pw, ph), Image.Resampling.BICUBIC), (x0, y0),
              mask.resize((pw, ph), Image.Resampling.BILINEAR))
    return out


def _cast(img: Image.Image, rng: random.Random) -> Image.Image:
    warm = rng.random() < 0.5
    gains = (1.08, 1.0, 0.85) if warm else (0.88, 0.97, 1.1)
    a = np.asarray(img, np.float32) * np.array(gains, np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def combined(img: Image.Image, rng: random.Random) -> Image.Image:
    """All of them at once, as a phone snapshot would be."""
    out = background(img, rng, scale=(0.55, 0.8))
    out = rotate(out, rng, 3.0, 12.0)
    out = crop(out, rng, 0.8, 0.95)
    out = light(out, rng, brightness=(0.6, 0.85), contrast=(0.7, 0.9))
    out = _cast(out, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return _jpeg(out, rng.randint(60, 80))


def clean(img: Image.Image, rng: random.Random) -> Image.Image:
    return _rgb(img)


ALTERATIONS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "clean": clean, "crop": crop, "rotate": rotate, "light": light, "background": background, "combined": combined,
}


def alter(img: Image.Image, name: str, seed: int, item_id: str) -> Image.Image:
    """The named alteration of one photo, the same on every run for the same (seed, item id)."""
    if name not in ALTERATIONS:
        raise ValueError(f"unknown alteration {name!r}; one of {sorted(ALTERATIONS)}")
    rng = random.Random(f"{seed}|{name}|{item_id}")
    return ALTERATIONS[name](img, rng)
