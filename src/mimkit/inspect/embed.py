"""What the features separate: 2-D projections of frozen features coloured by label, and
per-block statistics of the encoder.

Projections: PCA and t-SNE from scikit-learn (the `eval` extra), UMAP when `umap-learn` is
installed. Per-block statistics, one value per block:

* feature norm: the mean L2 norm of the tokens leaving the block (the residual stream);
* attention entropy: the mean Shannon entropy (nats) of the block's attention rows, over
  images, heads and queries; log(N) would be uniform attention over N tokens;
* weight entropy: the block's weight-number entropy exactly as `mimkit prune --method entropy`
  scores it (`mimkit.compress.importance.block_entropy`: 256 bins, weight matrices pooled).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimkit.compress.importance import block_entropy
from mimkit.data.transforms import fit_to_model, normalize
from mimkit.errors import ConfigError, DataError
from mimkit.eval.features import extract_features
from mimkit.inspect.attention import pyplot, save_figure
from mimkit.models.vit import VisionTransformer

PROJECTIONS = ("pca", "tsne", "umap")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def available_projections() -> list[str]:
    """PCA and t-SNE always (scikit-learn is required); UMAP when its package is installed."""
    return ["pca", "tsne"] + (["umap"] if importlib.util.find_spec("umap") else [])


def project(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by `method` (pca | tsne | umap), seeded."""
    try:
        # optional: mimkit[eval] (scikit-learn)
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise ConfigError("projections need scikit-learn: pip install 'mimkit[eval]'") from exc
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
        # one thread: Barnes-Hut's OpenMP threads spin-wait on each other, and on a shared
        # 2-core CPU 40 points took 38 s with 2 threads, 1.5 s with 1
        with threadpool_limits(limits=1, user_api="openmp"):
            return tsne.fit_transform(features)
    if method == "umap":
        try:
            import umap  # optional: umap-learn
        except ImportError as exc:
            raise ConfigError("projection umap needs umap-learn: pip install umap-learn") from exc
        neighbours = min(15, len(features) - 1)
        return umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(
            features
        )
    raise ConfigError(f"projection {method!r}: expected one of {list(PROJECTIONS)}")


@torch.no_grad()
def block_statistics(
    encoder: VisionTransformer, images: torch.Tensor, mean: list[float], std: list[float]
) -> dict[str, list[float]]:
    """Per block (1..depth): feature norm, attention entropy (nats), weight entropy (nats)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    x = fit_to_model(normalize(images.to(device), mean, std), encoder.cfg.input_size)
    _, hidden = encoder(x, return_hidden=True)
    maps = encoder.attention_maps(x)
    attn_entropy = [float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean()) for a in maps]
    return {
        "feature_norm": [float(h.float().norm(dim=-1).mean()) for h in hidden[1:]],
        "attention_entropy": attn_entropy,
        "attention_entropy_uniform": math.log(maps[0].shape[-1]),
        "weight_entropy": [block_entropy(b) for b in encoder.blocks],
    }


def projection_figure(
    points: dict[str, np.ndarray],
    labels: np.ndarray,
    names: list[str] | None,
    title: str,
    out: Path,
) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points) + 1.6, 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10" if labels.max(initial=0) < 10 else "tab20")
    classes = np.unique(labels)
    for ax, (method, xy) in zip(axes[0], points.items(), strict=True):
        for c in classes:
            sel = labels == c
            name = names[c] if names and c < len(names) else str(c)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(int(c) % cmap.N), label=name)
        ax.set_title({"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[method], fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(
        loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2.5, frameon=False
    )
    return save_figure(fig, out, title)


def statistics_figure(stats: dict[str, Any], out: Path) -> Path:
    plt = pyplot()
    depth = len(stats["feature_norm"])
    blocks = np.arange(1, depth + 1)
    panels = (
        ("feature_norm", "feature norm (mean L2 of tokens)"),
        ("attention_entropy", "attention entropy (nats)"),
        ("weight_entropy", "weight entropy (nats, as prune)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(blocks, stats[key], marker="o")
        if key == "attention_entropy":
            ax.axhline(stats["attention_entropy_uniform"], ls="--", c="grey", lw=1)
            ax.text(1, stats["attention_entropy_uniform"], " uniform", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("block")
        ax.set_xticks(blocks)
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def save_embedding_figures(
    encoder: VisionTransformer,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    out_dir: str | Path,
    methods: list[str] | None = None,
    class_names: list[str] | None = None,
    seed: int = 0,
    stats_images: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """`embedding.png` (one panel per projection), `blocks.png` and `embed.json` in `out_dir`."""
    if len(images) < 5:
        raise DataError(f"a projection needs at least 5 labelled items, got {len(images)}")
    methods = methods or available_projections()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feats = extract_features(encoder, images, mean, std, device=device, progress=False)
    feats = feats.numpy().astype(np.float64)
    points = {m: project(feats, m, seed) for m in methods}
    y = labels.numpy()
    title = f"frozen features ({encoder.cfg.pool} pool, {len(y)} test items), coloured by label"
    embedding = projection_figure(points, y, class_names, title, out_dir / "embedding.png")
    stats = block_statistics(encoder, images[:stats_images], mean, std)
    blocks = statistics_figure(stats, out_dir / "blocks.png")
    summary = {"items": len(y), "projections": methods, "seed": seed, "blocks": stats}
    (out_dir / "embed.json").write_text(json.dumps(summary, indent=1))
    return {"embedding": embedding, "blocks": blocks, "summary": summary}
