"""Spatial masking strategies of the MAE family, all on one contract.

Each strategy is a function of (batch, grid (h, w), ratio, device, generator) that returns a
`Mask` hiding exactly `N - int(N * (1 - ratio))` patches per sample, as MAE counts them, so
every strategy can replace MAE's random masking without changing batch shapes. They differ
only in *which* patches are hidden, which each expresses as a per-patch priority: the patches
with the lowest priority are kept (`mask_from_noise`). Everything runs batched on the device
and draws randomness only from the generator it is given.

- random (MAE): uniform noise.
- block (BEiT): rectangles of random area and aspect ratio are hidden one after another until
  the count is reached (the last rectangle only partly).
- coarse (SimMIM): random masking on a grid of larger mask patches (`mask_patch` model
  patches per side); counts are exact on the coarse grid, hence on the fine one.
- grid (UM-MAE style uniform sampling): one kept patch at a random place in every s x s cell
  (s = round(1 / sqrt(1 - ratio))); any surplus or shortfall is settled at random.
- gmml (GMML-style groups): connected blobs of random radius around random centres.
- multiblock (I-JEPA): four target rectangles hidden, one large context block kept.
- colormae red/blue/green/purple (ColorMAE): white noise filtered on the patch grid (low-pass,
  high-pass, band-pass, band-stop), then thresholded to the exact ratio. The masks do not look
  at the image at all: they are data-independent by construction.
"""

from __future__ import annotations

import math

import torch

from mimkit.masking.core import Mask, mask_from_noise, mask_keeping_lowest, num_kept

Device = torch.device | str


def random_masking(
    batch: int,
    grid: tuple[int, ...] | int,
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """MAE's per-sample uniform random masking, on a patch grid of any rank (or its size)."""
    n = grid if isinstance(grid, int) else math.prod(grid)
    noise = torch.rand(batch, n, device=device, generator=generator)
    return mask_from_noise(noise, mask_ratio)


def _uniform(shape, lo, hi, device, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, device=device, generator=generator)


def _coords(grid: tuple[int, int], device: Device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every patch, flattened row-major: (N,), (N,)."""
    h, w = grid
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return rows.reshape(-1).float(), cols.reshape(-1).float()


def _first_cover_priority(covers: torch.Tensor, generator, device) -> torch.Tensor:
    """Keep-priority from shape coverage (B, S, N): hide patches of earlier shapes first.

    A patch's priority is the index of the first shape covering it (S if none), plus a random
    fraction so ties within a shape break at random; high priority = hidden last = kept.
    Negated for `mask_from_noise`, which keeps the *lowest* values: we want to keep the
    patches covered late or never, so keep-priority = -(first cover index).
    """
    b, s, n = covers.shape
    index = torch.arange(s, device=device, dtype=torch.float32).view(1, s, 1).expand(b, s, n)
    first = torch.where(covers, index, torch.full_like(index, float(s))).min(dim=1).values
    jitter = torch.rand(b, n, device=device, generator=generator)
    return -(first + jitter)


def block_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    min_patches: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_blocks: int = 64,
) -> Mask:
    """BEiT's block-wise masking: random rectangles (area >= `min_patches`, aspect in range)."""
    h, w = grid
    n = h * w
    target = n - num_kept(n, mask_ratio)
    scale = (min_patches / n, max(min_patches, target) / n)
    covers = _random_blocks(batch, max_blocks, grid, scale, aspect, device, generator)
    return mask_from_noise(_first_cover_priority(covers, generator, device), mask_ratio)


def coarse_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    mask_patch: int = 2,
) -> Mask:
    """SimMIM: random masking of `mask_patch` x `mask_patch` groups of model patches."""
    h, w = grid
    if h % mask_patch or w % mask_patch:
        raise ValueError(f"grid {h}x{w} is not divisible by the mask patch {mask_patch}")
    coarse = torch.rand(batch, h // mask_patch, w // mask_patch, device=device, generator=generator)
    noise = (
        coarse.repeat_interleave(mask_patch, 1).repeat_interleave(mask_patch, 2).reshape(batch, -1)
    )
    # all patches of a group share its noise, so keeping whole groups keeps whole groups
    kept_groups = num_kept((h // mask_patch) * (w // mask_patch), mask_ratio)
    return mask_keeping_lowest(noise, kept_groups * mask_patch * mask_patch)


def grid_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """Uniform sampling: one kept patch per s x s cell at a random offset, counts settled at random."""
    h, w = grid
    s = max(1, round(1 / math.sqrt(max(1e-9, 1 - mask_ratio))))
    rows, cols = _coords(grid, device)
    cell = (rows // s) * math.ceil(w / s) + (cols // s)  # (N,) cell id
    n_cells = math.ceil(h / s) * math.ceil(w / s)
    # a patch is its cell's chosen one when its random draw is the cell's smallest
    draw = torch.rand(batch, h * w, device=device, generator=generator)
    cell_min = torch.full((batch, n_cells), 2.0, device=device).scatter_reduce(
        1, cell.long().expand(batch, -1), draw, reduce="amin"
    )
    chosen = draw == cell_min.gather(1, cell.long().expand(batch, -1))
    # chosen patches are kept first; the others fill up or are cut at random
    priority = torch.where(chosen, draw - 2.0, draw)
    return mask_from_noise(priority, mask_ratio)


def _random_blocks(
    batch: int,
    count: int,
    grid: tuple[int, int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
    device: Device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B, count, N) bool: rectangles covering a `scale` share of the grid, aspect in range."""
    h, w = grid
    area = _uniform((batch, count), *scale, device, generator) * h * w
    ratio = _uniform(
        (batch, count), math.log(aspect[0]), math.log(aspect[1]), device, generator
    ).exp()
    bh = (area * ratio).sqrt().round().clamp(1, h)
    bw = (area / ratio).sqrt().round().clamp(1, w)
    top = (torch.rand(batch, count, device=device, generator=generator) * (h - bh + 1)).floor()
    left = (torch.rand(batch, count, device=device, generator=generator) * (w - bw + 1)).floor()
    rows, cols = _coords(grid, device)
    return (
        (rows >= top[..., None]) & (rows < (top + bh)[..., None])
        & (cols >= left[..., None]) & (cols < (left + bw)[..., None])
    )  # fmt: skip


def multiblock_regions(
    batch: int,
    grid: tuple[int, int],
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA's regions, (B, N) bool each: the union of the target blocks, and the context block."""
    target = _random_blocks(batch, targets, grid, target_scale, target_aspect, device, generator)
    context = _random_blocks(batch, 1, grid, context_scale, (1.0, 1.0), device, generator)
    return target.any(1), context[:, 0]


def multiblock_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    **regions,
) -> Mask:
    """I-JEPA's multi-block mask: target rectangles to predict and one large context block.

    Kept first: context patches outside every target block; then patches outside the context;
    target-block patches last. The count is MAE's for `mask_ratio`, so where the context minus
    the targets is smaller than that, some of the lower tiers are kept too.
    """
    target, context = multiblock_regions(batch, grid, device, generator, **regions)
    jitter = torch.rand(batch, grid[0] * grid[1], device=device, generator=generator)
    tier = torch.where(target, 2.0, torch.where(context, 0.0, 1.0))
    return mask_from_noise(tier + jitter, mask_ratio)


def gmml_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    radius: tuple[float, float] = (1.0, 3.0),
    max_groups: int = 32,
) -> Mask:
    """GMML-style groups of connected tokens: discs of random radius around random centres."""
    h, w = grid
    cy = torch.rand(batch, max_groups, device=device, generator=generator) * h
    cx = torch.rand(batch, max_groups, device=device, generator=generator) * w
    rad = _uniform((batch, max_groups), radius[0], radius[1], device, generator)
    rows, cols = _coords(grid, device)
    dist2 = (rows + 0.5 - cy[..., None]) ** 2 + (cols + 0.5 - cx[..., None]) ** 2
    covers = dist2 <= rad[..., None] ** 2
    return mask_from_noise(_first_cover_priority(covers, generator, device), mask_ratio)


def _gaussian_blur(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Periodic Gaussian low-pass of (B, h, w) maps in the frequency domain (any grid size)."""
    h, w = noise.shape[-2:]
    fy = torch.fft.fftfreq(h, device=noise.device, dtype=noise.dtype)
    fx = torch.fft.fftfreq(w, device=noise.device, dtype=noise.dtype)
    gain = torch.exp(-2 * math.pi**2 * sigma**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(noise) * gain).real


COLORS = ("red", "blue", "green", "purple")


def colored_noise(
    batch: int,
    grid: tuple[int, int],
    color: str,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    sigma: float = 1.0,
) -> torch.Tensor:
    """(B, h, w) filtered white noise: red low-pass, blue high-pass, green band-pass,
    purple band-stop (ColorMAE's four colours), with Gaussian filters of width `sigma`."""
    white = torch.randn(batch, *grid, device=device, generator=generator)
    low = _gaussian_blur(white, sigma)
    band = low - _gaussian_blur(white, 2 * sigma)
    if color == "red":
        return low
    if color == "blue":
        return white - low
    if color == "green":
        return band
    if color == "purple":
        return white - band
    raise ValueError(f"unknown noise colour {color!r}; expected one of {list(COLORS)}")


def colormae_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: Device = "cpu",
    generator: torch.Generator | None = None,
    color: str = "green",
    sigma: float = 1.0,
) -> Mask:
    """ColorMAE: hide the patches where filtered noise is highest; exact ratio, no image needed."""
    noise = colored_noise(batch, grid, color, device, generator, sigma).reshape(batch, -1)
    return mask_from_noise(-noise, mask_ratio)
