"""The settings of `mimkit eval segment`'s heads, kept free of torch so that the command's
`--help` (which shows their defaults) starts fast."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SegmentSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # AdamW peak lr of the fpn head (and of the top block when fine-tuned)
    linear_lr: float = 1e-2  # of the linear head: one layer on fixed features learns faster
    weight_decay: float = 0.01
    layer_decay: float = 0.75  # fine-tuning only
    width: int = 64  # channels of the FPN decoder
    seed: int = 0
