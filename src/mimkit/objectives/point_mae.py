"""Point-MAE (Pang et al., 2022): mask most point groups, encode the rest, rebuild the hidden.

1. Cut each cloud into `groups` groups of `group_size` points: farthest-point centres and
   their nearest neighbours, each group relative to its centre (`mimkit.models.points`).
2. Hide a random `masking.ratio` of the groups (0.6 in the paper); the mask indexes groups.
3. The encoder (mini-PointNet tokens + centre embedding + ViT blocks) sees only the visible
   groups; the decoder gets them plus a mask token at every hidden group, with the centre
   embedding of every group, and predicts the hidden groups' points.
4. The loss is Chamfer-L2 between each hidden group's predicted and true points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.points import PointDecoder, PointEncoder, chamfer_l2, gather_points
from mimkit.objectives.base import MethodOutput, MethodSettings


@dataclass
class PointMAESettings(MethodSettings):
    name = "point_mae"
    groups: int = 64  # G tokens per cloud (farthest-point centres)
    group_size: int = 32  # S points per group (the centre's nearest neighbours)
    tokenizer_width: int = 128  # the mini-PointNet's first hidden width (Point-MAE: 128)

    def check(self, model: ModelConfig) -> None:
        if self.groups < 2 or self.group_size < 1 or self.tokenizer_width < 1:
            raise ConfigError(
                "method.groups must be >= 2, method.group_size and method.tokenizer_width >= 1; "
                f"got {self.groups}, {self.group_size} and {self.tokenizer_width}"
            )


def draw_group_mask(
    masking: MaskingConfig,
    batch: int,
    groups: int,
    device: torch.device | str,
    generator: torch.Generator | None,
) -> Mask:
    """A random mask over `groups` tokens per cloud (only `random` makes sense for groups)."""
    if masking.strategy != "random":
        raise ConfigError(
            f"masking.strategy {masking.strategy!r}: point groups have no grid; use 'random'"
        )
    return masking.draw(batch, (groups,), device, generator)


def hidden_groups(
    neighbourhoods: torch.Tensor, centres: torch.Tensor, mask: Mask
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden groups' points (B, M, S, 3) and centres (B, M, 3), in `ids_masked` order."""
    points = take_tokens(neighbourhoods.flatten(2), mask.ids_masked).unflatten(
        -1, neighbourhoods.shape[2:]
    )
    return points, gather_points(centres, mask.ids_masked)


class PointMAE(nn.Module):
    reconstructs_pixels = False  # it rebuilds points, not pictures

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: PointMAESettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig(ratio=0.6)
        self.settings = settings or PointMAESettings()
        s = self.settings
        self.encoder = PointEncoder(cfg, s.groups, s.group_size, s.tokenizer_width)
        self.decoder = PointDecoder(cfg, self.settings.group_size)

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Mask:
        return draw_group_mask(self.masking, batch, self.settings.groups, device, generator)

    def forward(
        self,
        clouds: torch.Tensor,
        mask: Mask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        mask = mask if mask is not None else self.draw_mask(len(clouds), clouds.device, generator)
        neighbourhoods, centres = self.encoder.group(clouds)
        latent = self.encoder.encode_groups(neighbourhoods, centres, mask.ids_keep)
        target, hidden_centres = hidden_groups(neighbourhoods, centres, mask)
        pred, _ = self.decoder(latent, gather_points(centres, mask.ids_keep), hidden_centres)
        loss = chamfer_l2(pred, target)
        return MethodOutput(loss, pred, mask, mask.ids_masked)

    @torch.no_grad()
    def reconstruct_points(self, clouds: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        """Absolute coordinates for pictures: visible (B, K*S, 3), hidden and predicted
        (B, M*S, 3) points."""
        neighbourhoods, centres = self.encoder.group(clouds)
        out = self.forward(clouds, mask=mask)
        target, hidden_centres = hidden_groups(neighbourhoods, centres, mask)
        visible = take_tokens(neighbourhoods.flatten(2), mask.ids_keep).unflatten(-1, (-1, 3))
        visible = visible + gather_points(centres, mask.ids_keep)[:, :, None]
        return {
            "visible": visible.flatten(1, 2),
            "hidden": (target + hidden_centres[:, :, None]).flatten(1, 2),
            "predicted": (out.pred + hidden_centres[:, :, None]).flatten(1, 2),
        }

    def encode(self, clouds: torch.Tensor) -> torch.Tensor:
        """Deterministic features of whole clouds (every group, no mask), averaged."""
        return self.encoder.features(clouds)
