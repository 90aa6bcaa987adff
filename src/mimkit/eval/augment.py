"""Fine-tuning's extra augmentation, batched on the device in torch (no torchvision, no PIL).

`rand_augment` is RandAugment as MAE fine-tunes with it (timm's `rand-m9-mstd0.5-inc1`: two
operations per image from the "increasing" set, each applied with probability 0.5, magnitude
drawn per image from N(m, mstd) clipped to [0, 10]); it works on images in [0, 1].
`random_erasing` is timm's pixel mode (one rectangle of 2-33 % of the image, aspect 0.3-3.3,
filled with N(0, 1) noise) on normalised images. Each image draws its own operation and
magnitude; every operation runs once per batch on the images that drew it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (images, level in [-1, 1]) -> images; the sign is timm's `_randomly_negate`, drawn by the
# caller from its generator; operations without a direction read the level's size
Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample with per-image affine `theta` (B, 2, 3), outside filled with grey 0.5 (timm: 128)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return (
        F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        + 0.5
    )


def _eye(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(x.shape[0], 1, 1)


def rotate(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    angle = level * math.radians(30.0)
    theta = _eye(x)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    return _affine(x, theta)


def shear_x(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    theta = _eye(x)
    theta[:, 0, 1] = level * 0.3
    return _affine(x, theta)


def shear_y(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    theta = _eye(x)
    theta[:, 1, 0] = level * 0.3
    return _affine(x, theta)


def translate_x(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    theta = _eye(x)
    theta[:, 0, 2] = level * 0.45 * 2  # fraction of the side, in [-1, 1] coordinates
    return _affine(x, theta)


def translate_y(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    theta = _eye(x)
    theta[:, 1, 2] = level * 0.45 * 2
    return _affine(x, theta)


def auto_contrast(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp(min=1e-6), x)


def equalize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels."""
    b, c, h, w = x.shape
    q = (x.clamp(0, 1) * 255).round().long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float)
    )
    cdf = hist.cumsum(1)
    first = cdf.gather(1, (hist > 0).float().argmax(1, keepdim=True))  # count of the lowest level
    lut = ((cdf - first) / (h * w - first).clamp(min=1)).clamp(0, 1)
    return lut.gather(1, q).view(b, c, h, w)


def invert(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def posterize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    bits = 4 - (level.abs() * 4).long()  # increasing: stronger with level, 4 bits down to 0
    step = _per_image(2.0 ** (8 - bits).float(), x)
    return torch.floor(x * 255 / step) * step / 255


def solarize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    threshold = _per_image(1.0 - level.abs(), x)
    return torch.where(x >= threshold, 1.0 - x, x)


def solarize_add(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    add = _per_image(level.abs() * 110 / 255, x)
    return torch.where(x < 128 / 255, (x + add).clamp(0, 1), x)


def _blend(x: torch.Tensor, other: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    factor = _per_image(1.0 + level * 0.9, x)
    return (other + factor * (x - other)).clamp(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def color(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x), level)


def contrast(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    mean = _grey(x)[:, :1].mean(dim=(-2, -1), keepdim=True)
    return _blend(x, mean.expand_as(x), level)


def brightness(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), level)


def sharpness(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    return _blend(x, smooth, level)


#: timm's "increasing" RandAugment set (`_RAND_INCREASING_TRANSFORMS`), in its order.
RAND_OPS: dict[str, Op] = {
    "auto_contrast": auto_contrast,
    "equalize": equalize,
    "invert": invert,
    "rotate": rotate,
    "posterize": posterize,
    "solarize": solarize,
    "solarize_add": solarize_add,
    "color": color,
    "contrast": contrast,
    "brightness": brightness,
    "sharpness": sharpness,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "translate_x": translate_x,
    "translate_y": translate_y,
}


def rand_augment(
    x: torch.Tensor,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> RandAugmented images in [0, 1]."""
    if num_ops <= 0:
        return x
    b, ops = x.shape[0], list(RAND_OPS.values())
    for _ in range(num_ops):
        choice = torch.randint(len(ops), (b,), device=x.device, generator=generator)
        apply = torch.rand(b, device=x.device, generator=generator) < prob
        noise = torch.randn(b, device=x.device, generator=generator)
        sign = torch.where(torch.rand(b, device=x.device, generator=generator) < 0.5, -1.0, 1.0)
        level = ((magnitude + magnitude_std * noise).clamp(0, 10) / 10 * sign).to(x.dtype)
        out = x.clone()
        for k, op in enumerate(ops):
            rows = ((choice == k) & apply).nonzero().flatten()
            if len(rows):
                out[rows] = op(x[rows], level[rows]).to(x.dtype)
        x = out
    return x


def random_erasing(
    x: torch.Tensor,
    prob: float = 0.25,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_ratio: tuple[float, float] = (math.log(0.3), math.log(3.3)),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Normalised (B, C, H, W) -> with probability `prob` per image, one rectangle of N(0, 1)."""
    if prob <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, device=dev, generator=generator)

    target = uniform(*area) * h * w
    ratio = uniform(*log_ratio).exp()
    eh = (target * ratio).sqrt().round().clamp(1, h)
    ew = (target / ratio).sqrt().round().clamp(1, w)
    top = (uniform(0, 1) * (h - eh + 1)).floor()
    left = (uniform(0, 1) * (w - ew + 1)).floor()
    erase = torch.rand(b, device=dev, generator=generator) < prob
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
        & erase[:, None, None]
    )
    noise = torch.randn(x.shape, device=dev, generator=generator, dtype=x.dtype)
    return torch.where(inside[:, None], noise, x)
