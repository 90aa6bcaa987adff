"""Masking: which patch tokens each sample hides. A mask is data, drawn by a visible call.

core.py holds `Mask` and the pure helpers; spatial.py and video.py the strategies; table.py the
one table they are chosen from (one signature); config.py the `masking:` config section.
"""

from mimkit.masking.config import MaskingConfig
from mimkit.masking.core import (
    Mask,
    mask_from_bool,
    mask_from_noise,
    mask_keeping_lowest,
    num_kept,
    take_tokens,
)
from mimkit.masking.spatial import (
    COLORS,
    block_masking,
    coarse_masking,
    colored_noise,
    colormae_masking,
    gmml_masking,
    grid_masking,
    multiblock_masking,
    multiblock_regions,
    random_masking,
)
from mimkit.masking.table import STRATEGIES, draw
from mimkit.masking.video import running_cell_targets, tube_masking

__all__ = [
    "COLORS",
    "STRATEGIES",
    "Mask",
    "MaskingConfig",
    "block_masking",
    "coarse_masking",
    "colored_noise",
    "colormae_masking",
    "draw",
    "gmml_masking",
    "grid_masking",
    "mask_from_bool",
    "mask_from_noise",
    "mask_keeping_lowest",
    "multiblock_masking",
    "multiblock_regions",
    "num_kept",
    "random_masking",
    "running_cell_targets",
    "take_tokens",
    "tube_masking",
]
