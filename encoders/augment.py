"""Training views of catalogue photos: batched torch ops on (n, 3, h, w) tensors in [0, 1], on CPU or GPU.

Catalogue photos are studio shots on white, so a tower trained on them alone learns the studio. The views here
take the product out of it: the product's mask (what the near-white border does not reach), pasted at another
scale, angle and place onto another background, under other light, colour, blur and noise. `mild_view` is the
old recipe (zoom in a little, mirror), `strong_view` everything, and `two_views` the pair one photo gives per
step (the second view always strong, for the image-to-image contrastive term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WHITE_LEVEL = 0.92  # a pixel this bright in every channel can be studio background
MASK_STEPS = 48  # flood-fill dilation steps from the border (a 64-pixel photo is reached in 32)


@dataclass(frozen=True)
class ViewSettings:
    """How far a strong view may move from the catalogue photo (each alteration has its own chance)."""

    zoom: tuple[float, float] = (0.6, 2.0)  # source window / frame: < 1 crops in, > 1 shows the product smaller
    rotate_deg: float = 25.0
    perspective: float = 0.12
    background: float = 0.6  # chance of pasting the product onto another background
    brightness: tuple[float, float] = (0.45, 1.35)
    contrast: tuple[float, float] = (0.45, 1.35)
    # colour moves little: a shopper looks for the colour they photographed (the first GPU stage, with hue 0.08
    # of a turn, saturation 0-1.6, white balance 0.2 and 10% greyscale, lost text->image NDCG@10 on the
    # colour-naming dev queries: 0.646 -> 0.582; models/README.md has the stages)
    saturation: tuple[float, float] = (0.6, 1.4)
    hue: float = 0.02  # of a full turn
    gamma: tuple[float, float] = (0.7, 1.5)
    white_balance: float = 0.12  # each channel's gain within 1 +- this
    shading: float = 0.5  # chance of uneven light (a smooth field between 0.55 and 1.1)
    greyscale: float = 0.02
    blur: float = 0.3
    noise: float = 0.3
    downsample: float = 0.2  # chance of a low-resolution round trip (phone zoom, heavy JPEG)
    mild: float = 0.5  # chance that the first of two views is mild (the catalogue photo zoomed in a little)


def settings_for(zoom_out: float, background: float) -> ViewSettings:
    """The default strong views with another zoom-out limit and background chance ([finetune].view_*)."""
    import dataclasses

    if zoom_out < 1.0 or not 0.0 <= background <= 1.0:
        raise ValueError(f"view_zoom_out must be >= 1 and view_background in [0, 1], got {zoom_out}, {background}")
    return dataclasses.replace(ViewSettings(), zoom=(ViewSettings.zoom[0], zoom_out), background=background)


def _rand(shape: Any, gen: Any) -> Any:
    """Uniform [0, 1) numbers made where the generator lives (a CUDA generator makes them on the GPU)."""
    import torch

    return torch.rand(shape, generator=gen, device=gen.device)


def _uniform(n: int, lo: float, hi: float, gen: Any, device: Any) -> Any:
    return _rand(n, gen).mul_(hi - lo).add_(lo).to(device)


def _chance(n: int, p: float, gen: Any, device: Any) -> Any:
    return (_rand(n, gen) < p).to(device)


def product_masks(x: Any) -> Any:
    """(n, 1, h, w) float in [0, 1]: 1 on the product, 0 on the studio background, i.e. near-white pixels that
    the photo's border reaches through other near-white pixels (a white shirt inside the outline stays product).
    Edges softened by one pixel."""
    import torch
    import torch.nn.functional as F

    white = (x.min(dim=1, keepdim=True).values >= WHITE_LEVEL)
    seed = torch.zeros_like(white)
    seed[..., 0, :] = True
    seed[..., -1, :] = True
    seed[..., :, 0] = True
    seed[..., :, -1] = True
    bg = seed & white
    for _ in range(MASK_STEPS):
        grown = F.max_pool2d(bg.float(), 3, stride=1, padding=1) > 0
        grown &= white
        if bool((grown == bg).all()):
            break
        bg = grown
    fg = (~bg).float()
    return F.avg_pool2d(F.pad(fg, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _homographies(n: int, s: ViewSettings, gen: Any, device: Any) -> Any:
    """(n, 3, 3) maps from output to source coordinates (both in [-1, 1]): zoom, aspect, rotation, mirror,
    shift and a little perspective."""
    import torch

    lo, hi = math.log(s.zoom[0]), math.log(s.zoom[1])
    zoom = torch.exp(_uniform(n, lo, hi, gen, device))
    aspect = torch.exp(_uniform(n, -0.15, 0.15, gen, device))
    angle = _uniform(n, -s.rotate_deg, s.rotate_deg, gen, device) * (math.pi / 180.0)
    mirror = torch.where(_chance(n, 0.5, gen, device), -1.0, 1.0)
    # the window may wander so far that the product still fills at least part of the frame
    room = (zoom - 1.0).abs() * 0.5 + 0.1
    tx = _uniform(n, -1.0, 1.0, gen, device) * room
    ty = _uniform(n, -1.0, 1.0, gen, device) * room
    px = _uniform(n, -s.perspective, s.perspective, gen, device)
    py = _uniform(n, -s.perspective, s.perspective, gen, device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = zoom * aspect * mirror, zoom / aspect
    h = torch.zeros(n, 3, 3, device=device)
    h[:, 0, 0], h[:, 0, 1], h[:, 0, 2] = sx * cos, -sy * sin, tx
    h[:, 1, 0], h[:, 1, 1], h[:, 1, 2] = sx * sin, sy * cos, ty
    h[:, 2, 0], h[:, 2, 1], h[:, 2, 2] = px, py, 1.0
    return h


def warp(x: Any, mask: Any, homography: Any) -> tuple[Any, Any]:
    """x and its mask seen through the homographies; what falls outside the photo is white, mask 0 there."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)  # (1, hw, 3)
    src = pts @ homography.transpose(1, 2)  # (n, hw, 3)
    grid = (src[..., :2] / src[..., 2:].clamp(min=1e-3)).reshape(n, h, w, 2)
    both = torch.cat([x - 1.0, mask], dim=1)  # zero padding -> white photo, empty mask
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :3] + 1.0, out[:, 3:]


def _smooth_field(n: int, channels: int, h: int, w: int, cells: int, gen: Any, device: Any) -> Any:
    """Random low-frequency values in [0, 1]: a coarse grid upsampled smoothly."""
    import torch.nn.functional as F

    coarse = _rand((n, channels, cells, cells), gen).to(device)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


def backgrounds(x: Any, gen: Any) -> Any:
    """(n, 3, h, w) backgrounds, one of five kinds per row: a flat colour, a two-colour gradient, smooth colour
    noise, stripes, or a zoomed-in crop of another photo of the batch."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    dev = x.device
    kind = (_rand(n, gen) * 5).long().clamp_(max=4).to(dev)
    c1 = _rand((n, 3, 1, 1), gen).to(dev)
    c2 = _rand((n, 3, 1, 1), gen).to(dev)
    flat = c1.expand(n, 3, h, w)
    angle = _uniform(n, 0.0, 2 * math.pi, gen, dev)
    ys = torch.linspace(-1, 1, h, device=dev).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, device=dev).view(1, 1, w)
    t = ((xs * torch.cos(angle).view(n, 1, 1) + ys * torch.sin(angle).view(n, 1, 1)) * 0.5 + 0.5).clamp(0, 1)
    gradient = c1 + (c2 - c1) * t[:, None]
    noise = _smooth_field(n, 3, h, w, 6, gen, dev)
    freq = _uniform(n, 4.0, 16.0, gen, dev).view(n, 1, 1)
    stripes = (torch.sin(t * freq * math.pi * 2) > 0).float()[:, None]
    striped = c1 + (c2 - c1) * stripes
    other = x.roll(1, dims=0)
    crop = F.interpolate(other[..., h // 4: h - h // 4, w // 4: w - w // 4], size=(h, w), mode="bilinear",
                         align_corners=False)
    stack = torch.stack([flat, gradient, noise, striped, crop], dim=1)  # (n, 5, 3, h, w)
    return stack[torch.arange(n, device=dev), kind]


def _grey(x: Any) -> Any:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rotate_hue(x: Any, turns: Any) -> Any:
    """Rotate each row's hue by `turns` of a full circle (rotation about the grey axis in YIQ space)."""
    import torch

    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    a = turns * 2 * math.pi
    cos, sin = torch.cos(a), torch.sin(a)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)


def _blur(x: Any, sigma: Any) -> Any:
    """Gaussian blur with one sigma per row (separable, 7 taps)."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    taps = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    k = torch.exp(-(taps[None, :] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, 7)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def photometric(x: Any, s: ViewSettings, gen: Any) -> Any:
    """Other light and another camera: brightness, contrast, saturation, hue, gamma, white balance, uneven
    shading, greyscale, blur, noise and a low-resolution round trip, each drawn per row."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    dev = x.device

    def col(v: Any) -> Any:
        return v.view(n, 1, 1, 1)

    x = x * col(_uniform(n, *s.brightness, gen, dev))
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * col(_uniform(n, *s.contrast, gen, dev)) + mean
    g = _grey(x)
    x = (x - g) * col(_uniform(n, *s.saturation, gen, dev)) + g
    x = _rotate_hue(x.clamp(0, 1), _uniform(n, -s.hue, s.hue, gen, dev))
    x = x.clamp(1e-4, 1.0) ** col(_uniform(n, *s.gamma, gen, dev))
    gains = 1.0 + (_rand((n, 3, 1, 1), gen).to(dev) * 2 - 1) * s.white_balance
    x = x * gains
    shade = 0.55 + 0.55 * _smooth_field(n, 1, h, w, 3, gen, dev)
    x = torch.where(col(_chance(n, s.shading, gen, dev)), x * shade, x)
    x = torch.where(col(_chance(n, s.greyscale, gen, dev)), _grey(x).expand(n, 3, h, w), x)
    blurred = _blur(x, _uniform(n, 0.3, 1.5, gen, dev))
    x = torch.where(col(_chance(n, s.blur, gen, dev)), blurred, x)
    grain = torch.randn(x.shape, generator=gen, device=gen.device).to(dev)
    noisy = x + grain * col(_uniform(n, 0.01, 0.05, gen, dev))
    x = torch.where(col(_chance(n, s.noise, gen, dev)), noisy, x)
    side = int(h // 4 + float(_rand(1, gen)) * (h // 2))
    small = F.interpolate(F.interpolate(x, size=(side, side * w // h), mode="area"), size=(h, w),
                          mode="bilinear", align_corners=False)
    x = torch.where(col(_chance(n, s.downsample, gen, dev)), small, x)
    return x.clamp(0.0, 1.0)


def strong_view(x: Any, mask: Any, gen: Any, s: ViewSettings = ViewSettings()) -> Any:
    """A shopper's photo of the product: moved, scaled, turned and put in perspective, on another background
    (chance s.background, else the studio white), under other light. Input and output (n, 3, h, w) in [0, 1]."""
    import torch

    n = len(x)
    moved, m = warp(x, mask, _homographies(n, s, gen, x.device))
    pasted = m * moved + (1.0 - m) * backgrounds(x, gen)
    on_bg = _chance(n, s.background, gen, x.device).view(n, 1, 1, 1)
    return photometric(torch.where(on_bg, pasted, moved), s, gen)


def mild_view(x: Any, gen: Any, scale: tuple[float, float] = (0.8, 1.0), erase: float = 0.0) -> Any:
    """The catalogue photo zoomed in a little (random resized crop keeping `scale` of the area) and mirrored
    half the time; with chance `erase` one rectangle (2-20% of the area) blanked to grey."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, *scale, gen, dev)
    r = torch.exp(_uniform(n, math.log(0.9), math.log(1.1), gen, dev))
    sw, sh = torch.sqrt(area * r).clamp(max=1.0), torch.sqrt(area / r).clamp(max=1.0)
    tx, ty = _uniform(n, -1.0, 1.0, gen, dev) * (1.0 - sw), _uniform(n, -1.0, 1.0, gen, dev) * (1.0 - sh)
    sign = torch.where(_chance(n, 0.5, gen, dev), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * sign, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if erase <= 0:
        return out
    area = _uniform(n, 0.02, 0.2, gen, dev)
    r = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), gen, dev))
    eh, ew = (torch.sqrt(area * r) * h).clamp(1, h), (torch.sqrt(area / r) * w).clamp(1, w)
    y0, x0 = _uniform(n, 0.0, 1.0, gen, dev) * (h - eh), _uniform(n, 0.0, 1.0, gen, dev) * (w - ew)
    on = _chance(n, erase, gen, dev)
    ys = torch.arange(h, device=dev, dtype=out.dtype)[None, :, None]
    xs = torch.arange(w, device=dev, dtype=out.dtype)[None, None, :]
    box = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
           & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]) & on[:, None, None])
    return out.masked_fill(box[:, None], 0.5)


def two_views(x: Any, mask: Any, gen: Any, s: ViewSettings = ViewSettings(),
              mild_scale: tuple[float, float] = (0.8, 1.0)) -> tuple[Any, Any]:
    """Two views of each photo: the first mild with chance s.mild, else strong; the second always strong."""
    import torch

    n = len(x)
    first = torch.where(_chance(n, s.mild, gen, x.device).view(n, 1, 1, 1), mild_view(x, gen, mild_scale),
                        strong_view(x, mask, gen, s))
    return first, strong_view(x, mask, gen, s)
