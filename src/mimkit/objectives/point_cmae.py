"""Point-CMAE (Ren et al., 2024): Point-MAE with two masks and a contrastive constraint.

1. Group each cloud as Point-MAE does and draw two independent random masks over its groups.
2. One shared encoder encodes the visible groups of each masked view.
3. Two decoders of the same structure (not shared) each rebuild their view's hidden groups;
   both Chamfer-L2 losses count.
4. Groups hidden by both masks were predicted by both decoders from different context: their
   decoder features (before the point head) are pulled together, 1 - cosine similarity,
   weighted by `contrast_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.points import PointDecoder, PointEncoder, chamfer_l2, gather_points
from mimkit.objectives.base import MethodOutput
from mimkit.objectives.point_mae import PointMAESettings, draw_group_mask, hidden_groups


@dataclass
class PointCMAESettings(PointMAESettings):
    name = "point_cmae"
    contrast_weight: float = 1.0  # weight of the co-hidden feature agreement beside Chamfer


@dataclass(frozen=True)
class MaskPair:
    """Two masks of every cloud; `select` cuts both to a process's rows."""

    first: Mask
    second: Mask

    def select(self, rows: slice | torch.Tensor) -> MaskPair:
        return MaskPair(self.first.select(rows), self.second.select(rows))


def at_groups(values: torch.Tensor, ids: torch.Tensor, groups: int) -> torch.Tensor:
    """values (B, M, D) of groups `ids` (B, M) scattered into (B, groups, D), zero elsewhere."""
    out = values.new_zeros(values.shape[0], groups, values.shape[-1])
    return out.scatter(1, ids[..., None].expand_as(values), values)


def co_hidden_agreement(
    features_1: torch.Tensor, mask_1: Mask, features_2: torch.Tensor, mask_2: Mask
) -> torch.Tensor:
    """Mean (1 - cosine) between the two decoders' features (B, M, D) at each group hidden by
    both masks; zero when no group is."""
    g = mask_1.num_patches
    both = mask_1.binary * mask_2.binary  # (B, G) 1 where hidden twice
    f1 = F.normalize(at_groups(features_1.float(), mask_1.ids_masked, g), dim=-1)
    f2 = F.normalize(at_groups(features_2.float(), mask_2.ids_masked, g), dim=-1)
    return ((1 - (f1 * f2).sum(-1)) * both).sum() / both.sum().clamp(min=1)


class PointCMAE(nn.Module):
    reconstructs_pixels = False

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: PointCMAESettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig(ratio=0.6)
        self.settings = settings or PointCMAESettings()
        s = self.settings
        self.encoder = PointEncoder(cfg, s.groups, s.group_size, s.tokenizer_width)
        self.decoder_1 = PointDecoder(cfg, self.settings.group_size)
        self.decoder_2 = PointDecoder(cfg, self.settings.group_size)

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> MaskPair:
        """Two independent masks per cloud, drawn as one draw of 2 * batch rows."""
        both = draw_group_mask(self.masking, 2 * batch, self.settings.groups, device, generator)
        return MaskPair(both.select(slice(0, batch)), both.select(slice(batch, 2 * batch)))

    def forward(
        self,
        clouds: torch.Tensor,
        mask: MaskPair | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        mask = mask if mask is not None else self.draw_mask(len(clouds), clouds.device, generator)
        neighbourhoods, centres = self.encoder.group(clouds)
        pred_1, feat_1, loss_1 = self.branch(self.decoder_1, neighbourhoods, centres, mask.first)
        _, feat_2, loss_2 = self.branch(self.decoder_2, neighbourhoods, centres, mask.second)
        contrast = co_hidden_agreement(feat_1, mask.first, feat_2, mask.second)
        loss = loss_1 + loss_2 + self.settings.contrast_weight * contrast
        return MethodOutput(loss, pred_1, mask, mask.first.ids_masked)

    def branch(
        self, decoder: PointDecoder, neighbourhoods: torch.Tensor, centres: torch.Tensor, mask: Mask
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One masked view: (predicted hidden groups, their decoder features, Chamfer loss)."""
        latent = self.encoder.encode_groups(neighbourhoods, centres, mask.ids_keep)
        target, hidden_centres = hidden_groups(neighbourhoods, centres, mask)
        pred, features = decoder(latent, gather_points(centres, mask.ids_keep), hidden_centres)
        return pred, features, chamfer_l2(pred, target)

    def encode(self, clouds: torch.Tensor) -> torch.Tensor:
        """Deterministic features of whole clouds (every group, no mask), averaged."""
        return self.encoder.features(clouds)
