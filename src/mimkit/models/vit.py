"""A plain Vision Transformer encoder with timm's parameter names.

Names match timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.attn.qkv`, ...) so an encoder state dict loads into timm as is. The position
embedding is the fixed 2-D sin-cos table of MAE, kept as a persistent buffer so it travels with
the weights but is never trained. The encoder runs on whatever tokens it is given: pass
`ids_keep` to encode only the visible patches (MAE), or nothing for the full image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.models.config import ModelConfig
from mimkit.models.pos_embed import position_table


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


# Longest sequence for which bf16 attention on CPU runs as plain matmul-softmax instead of SDPA:
# PyTorch 2.13's CPU flash-attention (forward + backward) is 1.4-9x slower in bf16 than the three
# ops it fuses at 5-577 tokens (fp32: SDPA as fast or faster, so fp32 keeps it; measured on a
# 2-core AMD EPYC with AVX512-BF16, benchmarks/results/cpu_2026-12-02.md). Measured to 577 tokens
# (a 24x24 grid); longer sequences keep SDPA, whose memory does not grow with the n x n matrix.
CPU_BF16_MATMUL_MAX_TOKENS = 577


def attention_kernel(tokens: int, device_type: str, dtype: torch.dtype) -> str:
    """`matmul` (softmax(q k^T / sqrt(d)) v as three ops) or `sdpa` for one attention call."""
    if device_type == "cpu" and dtype == torch.bfloat16 and tokens <= CPU_BF16_MATMUL_MAX_TOKENS:
        return "matmul"
    return "sdpa"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of (B, heads, N, d_head) q, k, v through the kernel `attention_kernel` picks;
    `bias` is added to the scores before the softmax (SDPA's float `attn_mask`)."""
    if attention_kernel(q.shape[-2], q.device.type, q.dtype) == "matmul":
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        return scores.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head self-attention through `attention` (SDPA, or matmul-softmax for bf16 on CPU)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, head_dim: int | None = None
    ) -> None:
        """`head_dim` defaults to dim // num_heads; a structurally pruned block keeps the head
        width and has fewer heads, so its inner width num_heads * head_dim is below dim."""
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`bias`: an optional additive attention bias broadcast to (B, heads, N, N), e.g.
        ALiBi's distance penalties; None is plain attention."""
        b, n, _ = x.shape
        # unbind (one backward op) rather than qkv[0], qkv[1], qkv[2] (three full-size
        # zero-filled gradients): about 30% faster attention backward on CPU.
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        x = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def attention_weights(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, heads, N, N) softmax(q k^T / sqrt(d_head) + bias), each row a query's weights
        over keys.

        For inspection only: `forward` never forms this matrix (SDPA fuses it away), so this
        recomputes q and k from the same input.
        """
        b, n, _ = x.shape
        q, k, _ = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        return (scores if bias is None else scores + bias.float()).softmax(dim=-1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        drop_path: float = 0.0,
        head_dim: int | None = None,
        mlp_hidden: int | None = None,
    ) -> None:
        """`head_dim` and `mlp_hidden` default to dim // num_heads and int(dim * mlp_ratio);
        structurally pruned encoders give them per block."""
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden or int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), bias))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided convolution (timm's layout).

    An int patch size is a 2-D patch (`proj` is a Conv2d, as timm); a 3-tuple (t, p, p) is a
    tubelet or a volume cube (`proj` is a Conv3d, as VideoMAE).
    """

    def __init__(self, patch_size: int | tuple[int, ...], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        conv = nn.Conv3d if isinstance(patch_size, tuple) and len(patch_size) == 3 else nn.Conv2d
        self.proj = conv(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def prefix_token_count(cfg: ModelConfig) -> int:
    """Tokens before the patch tokens (and rows before the grid rows of the position table) in
    an encoder built from `cfg`: the cls token, if it has one."""
    return 1 if cfg.cls_token else 0


def layer_id_of(name: str, depth: int) -> int:
    """Layer of a parameter of a `depth`-block encoder, by its name in the encoder: the
    embeddings 0, block i -> i + 1, anything else (the final norm) depth + 1."""
    root = name.split(".", 1)[0]
    if root in ("patch_embed", "cls_token", "pos_embed"):
        return 0
    if root == "blocks":
        return int(name.split(".")[1]) + 1
    return depth + 1


class VisionTransformer(nn.Module):
    """ViT encoder. `forward(x, ids_keep)` returns normalised tokens [prefix..., patches...].

    The prefix is the cls token when `cfg.cls_token`, else empty; code that splits prefix from
    patch tokens reads `num_prefix_tokens`. The encoder also owns the other facts about its
    parameters that training needs (timm's names): `no_weight_decay()` and `layer_id(name)`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid_hw = cfg.grid_hw
        dim = cfg.embed_dim
        patch = cfg.patch_size if len(cfg.input_size) == 2 else cfg.patch_shape
        self.patch_embed = PatchEmbed(patch, cfg.in_chans, dim)
        if cfg.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        table = position_table(cfg.pos_embed, dim, cfg.grid_shape, cls_token=cfg.cls_token)
        self.register_buffer("pos_embed", table)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        head_dim = dim // cfg.num_heads  # per-block head counts (pruned encoders) keep this width
        self.blocks = nn.ModuleList(
            Block(
                dim, heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps, rate, head_dim, hidden
            )
            for rate, heads, hidden in zip(
                rates, cfg.heads_per_block(), cfg.mlp_hidden_per_block(), strict=True
            )
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cfg.cls_token:
            nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_vit_weights)
        self.norm.apply(init_vit_weights)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in every sequence this encoder makes: 1 (cls) or 0."""
        return prefix_token_count(self.cfg)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters weight decay must leave alone beyond biases and norms (which
        `train.optim` tells by shape): the cls token, and a position table if it is learned."""
        own = dict(self.named_parameters(recurse=False))
        return {name for name in ("cls_token", "pos_embed") if name in own}

    def layer_id(self, name: str) -> int:
        """Depth of parameter `name` (as this module names it) for layer-wise lr decay: the
        embeddings 0, block i -> i + 1, the final norm `len(blocks) + 1`."""
        return layer_id_of(name, len(self.blocks))

    def embed(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with position embedding, optionally only the `ids_keep` ones, after the
        prefix tokens: (B, num_prefix_tokens + N or K, D)."""
        if x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected {self.cfg.in_chans} input channels, got {x.shape[1]}")
        if x.ndim != 2 + len(self.cfg.input_size):
            raise ValueError(
                f"expected a {2 + len(self.cfg.input_size)}-D batch (B, C, *{self.cfg.input_size}), "
                f"got shape {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x) + self.pos_embed[:, self.num_prefix_tokens :]
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.with_prefix(tokens)

    def with_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, D) patch tokens (positions added) -> (B, num_prefix_tokens + K, D), the prefix
        tokens first, each with its own row of the position table."""
        if not self.num_prefix_tokens:
            return tokens
        prefix = self.cls_token + self.pos_embed[:, : self.num_prefix_tokens]
        return torch.cat([prefix.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.embed(x, ids_keep)
        bias = self.attention_bias(x, ids_keep, h.dtype)
        hidden = [h]
        for block in self.blocks:
            h = block(h, bias)
            hidden.append(h)
        out = self.norm(h)
        return (out, hidden) if return_hidden else out

    def attention_bias(
        self, x: torch.Tensor, ids_keep: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The additive attention bias every block gets for batch `x` (`ids_keep` tokens):
        None here, where positions come from the table; ALiBi encoders override it."""
        return None

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per block, (B, heads, N, N) attention weights over [prefix..., patches...] for the
        whole image (no mask, eval mode). Inspection only: the training path keeps SDPA."""
        was_training = self.training
        self.eval()
        try:
            h, maps = self.embed(x), []
            bias = self.attention_bias(x, None, h.dtype)
            for block in self.blocks:
                maps.append(block.attn.attention_weights(block.norm1(h), bias))
                h = block(h, bias)
            return maps
        finally:
            self.train(was_training)

    def forward_mask_tokens(
        self, x: torch.Tensor, hidden: torch.Tensor, mask_token: torch.Tensor
    ) -> torch.Tensor:
        """Normalised tokens of every patch (SimMIM, iBOT's student): hidden ones (`hidden`
        (B, N), 1 = hidden) enter as `mask_token` before the position embedding is added."""
        tokens = self.patch_embed(x)
        w = hidden[..., None].to(tokens.dtype)
        tokens = tokens * (1 - w) + mask_token.to(tokens.dtype) * w
        h = self.with_prefix(tokens + self.pos_embed[:, self.num_prefix_tokens :])
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """One vector per image from normalised tokens: the cls token or the patch average."""
        if self.cfg.pool == "avg":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return tokens[:, 0]

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic image features: no masking, no drop-path, pooled per `cfg.pool`."""
        was_training = self.training
        self.eval()
        try:
            return self.pool(self.forward(x))
        finally:
            self.train(was_training)
