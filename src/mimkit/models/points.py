"""Point-cloud tokens: farthest-point centres, kNN groups, a mini-PointNet, Chamfer distance.

A cloud (B, P, 3) becomes G tokens the way Point-MAE (Pang et al., 2022) makes them:

1. `farthest_point_sample` picks G well-spread centres;
2. `knn_groups` takes the S nearest points of each centre, expressed relative to it;
3. `MiniPointNet` turns each group into one vector (shared per-point MLP, max-pool, the pooled
   vector concatenated back to every point, a second MLP, max-pool again);
4. `CentreEmbed` (a two-layer MLP of the centre's xyz) is the position embedding.

`PointEncoder` is the transformer on those tokens, built from the ViT's `Block`s. Everything is
batched tensor code: no Python loops over samples, so it runs on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkit.models.config import ModelConfig
from mimkit.models.vit import Block, init_vit_weights, layer_id_of


def farthest_point_sample(points: torch.Tensor, count: int) -> torch.Tensor:
    """(B, P, 3) -> (B, count) indices: start at point 0, then repeatedly the point farthest
    from every centre chosen so far (deterministic, so features are too)."""
    b, p, _ = points.shape
    chosen = torch.zeros(b, count, dtype=torch.long, device=points.device)
    nearest = torch.full((b, p), float("inf"), device=points.device, dtype=points.dtype)
    last = torch.zeros(b, dtype=torch.long, device=points.device)
    rows = torch.arange(b, device=points.device)
    for i in range(count):  # a loop over centres, not samples: each step is one batched op
        chosen[:, i] = last
        d = ((points - points[rows, last][:, None]) ** 2).sum(-1)
        nearest = torch.minimum(nearest, d)
        last = nearest.argmax(dim=1)
    return chosen


def gather_points(points: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """points (B, P, C) at ids (B, *S) -> (B, *S, C)."""
    b, c = points.shape[0], points.shape[-1]
    flat = ids.reshape(b, -1)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, c))
    return out.reshape(*ids.shape, c)


def knn_groups(
    points: torch.Tensor, centres: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `size` nearest points of each centre: ((B, G, S, 3) offsets from the centre,
    (B, G, S) their indices in the cloud)."""
    ids = torch.cdist(centres, points).topk(size, dim=-1, largest=False).indices
    return gather_points(points, ids) - centres[:, :, None], ids


def group_cloud(points: torch.Tensor, groups: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-MAE's grouping: ((B, G, S, 3) neighbourhoods relative to their centre, (B, G, 3)
    centres). The same cloud always gives the same groups."""
    centres = gather_points(points, farthest_point_sample(points, groups))
    neighbourhoods, _ = knn_groups(points, centres, size)
    return neighbourhoods, centres


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chamfer-L2 of point sets (..., N, 3) and (..., M, 3), batched over the leading axes:
    mean squared distance from each predicted point to its nearest target point plus the same
    from target to prediction (Point-MAE's `ChamferDistanceL2`), averaged over the sets."""
    d = torch.cdist(pred.float(), target.float()).square()
    return d.min(dim=-1).values.mean(-1).mean() + d.min(dim=-2).values.mean(-1).mean()


class MiniPointNet(nn.Module):
    """One token per group: (B, G, S, 3) -> (B, G, dim), invariant to the order of the points."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Linear(3, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 2 * hidden)
        )
        self.second = nn.Sequential(
            nn.Linear(4 * hidden, 4 * hidden),
            nn.LayerNorm(4 * hidden),
            nn.ReLU(),
            nn.Linear(4 * hidden, dim),
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        f = self.first(groups)  # (B, G, S, 2h)
        pooled = f.max(dim=2, keepdim=True).values.expand_as(f)
        return self.second(torch.cat([pooled, f], dim=-1)).max(dim=2).values


class CentreEmbed(nn.Sequential):
    """Position embedding of group centres: xyz -> 128 -> GELU -> dim (Point-MAE's MLP)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


class PointEncoder(nn.Module):
    """Transformer on point-group tokens; the same facts as the ViT encoder (`cfg`, `blocks`,
    `norm`, `num_prefix_tokens`, `pool`, `no_weight_decay`, `layer_id`), so feature extraction,
    kNN and linear probes take it unchanged.

    `forward(clouds, ids_keep)` returns normalised tokens of the kept groups (all without
    `ids_keep`). As in Point-MAE the centre embedding is added before every block.
    """

    def __init__(self, cfg: ModelConfig, groups: int, group_size: int, width: int = 128) -> None:
        super().__init__()
        self.cfg, self.groups, self.group_size = cfg, groups, group_size
        dim = cfg.embed_dim
        self.tokenizer = MiniPointNet(dim, width)
        self.pos_embed = CentreEmbed(dim)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.apply(init_vit_weights)

    num_prefix_tokens = 0  # no cls token: features are the average of the group tokens

    def no_weight_decay(self) -> set[str]:
        return set()

    def layer_id(self, name: str) -> int:
        root = name.split(".", 1)[0]
        return 0 if root in ("tokenizer", "pos_embed") else layer_id_of(name, len(self.blocks))

    def group(self, clouds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if clouds.ndim != 3 or clouds.shape[-1] != 3:
            raise ValueError(f"expected point clouds (B, P, 3), got shape {tuple(clouds.shape)}")
        return group_cloud(clouds.float(), self.groups, self.group_size)

    def encode_groups(
        self,
        neighbourhoods: torch.Tensor,
        centres: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens of grouped clouds, only the `ids_keep` groups (B, K) when given."""
        if ids_keep is not None:
            neighbourhoods = gather_points(neighbourhoods.flatten(2), ids_keep).unflatten(
                -1, neighbourhoods.shape[2:]
            )
            centres = gather_points(centres, ids_keep)
        h, pos = self.tokenizer(neighbourhoods), self.pos_embed(centres)
        hidden = [h]
        for block in self.blocks:
            h = block(h + pos)
            hidden.append(h)
        out = self.norm(h)
        return (out, hidden) if return_hidden else out

    def forward(
        self,
        clouds: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        return self.encode_groups(*self.group(clouds), ids_keep, return_hidden)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)

    @torch.no_grad()
    def features(self, clouds: torch.Tensor) -> torch.Tensor:
        """Deterministic cloud features: all groups, eval mode, averaged."""
        was_training = self.training
        self.eval()
        try:
            return self.pool(self.forward(clouds))
        finally:
            self.train(was_training)


class PointDecoder(nn.Module):
    """Point-MAE's decoder: encoded visible tokens plus a shared mask token at every hidden
    group, the centre embedding added before every block; predicts each hidden group's S
    points (relative to its centre) from its token.

    `forward` returns (points (B, M, S, 3), hidden-group features (B, M, dim) before the head).
    """

    def __init__(self, cfg: ModelConfig, group_size: int) -> None:
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.embed = nn.Linear(cfg.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = CentreEmbed(dim)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(dim, 3 * group_size)
        self.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(
        self, latent: torch.Tensor, visible_centres: torch.Tensor, hidden_centres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = hidden_centres.shape[:2]
        x = torch.cat([self.embed(latent), self.mask_token.expand(b, m, -1)], dim=1)
        pos = self.pos_embed(torch.cat([visible_centres, hidden_centres], dim=1))
        for block in self.blocks:
            x = block(x + pos)
        hidden = self.norm(x[:, -m:])
        return self.head(hidden).unflatten(-1, (-1, 3)), hidden
