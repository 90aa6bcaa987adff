"""Throughput against accuracy for token merging: one row per r, measured on the same data.

Speed is timed apart from accuracy, interleaved: each round runs every r once on the same
batch, and each r's rate is its median over the rounds. A machine that slows down mid-way then
slows every r alike, so the speed-ups against r=0 stay fair.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mimkit.compress.tome import tome_features, tome_tokens
from mimkit.data.transforms import normalize
from mimkit.eval.knn import knn_top1
from mimkit.models.vit import VisionTransformer
from mimkit.progress import progress_interval

log = logging.getLogger(__name__)


@dataclass
class TomeRow:
    r: int
    tokens_out: int  # tokens left after the last block (cls included)
    img_per_s: float  # median of interleaved rounds on one batch
    speedup: float  # img_per_s over r=0's (or the smallest r's)
    knn_top1: float


@torch.no_grad()
def tome_all_features(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mean,
    std,
    r: int,
    batch: int,
    device,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    chunks = []
    starts = range(0, len(images), batch)
    bar = tqdm(
        starts,
        desc=desc,
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=progress_interval(),
    )
    for start in bar:
        x = normalize(images[start : start + batch].to(device), mean, std)
        chunks.append(tome_features(encoder, x, r).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def interleaved_rates(
    fns: dict,
    x: torch.Tensor,
    rounds: int = 15,
    warmup: int = 2,
    progress: bool = False,
    desc: str = "timing",
) -> dict:
    """Median images/s of each function of `fns` (name -> images -> anything) on batch `x`,
    every round running all of them in turn, so a machine slowing down mid-way slows all alike."""
    times = interleaved_times(fns, x, rounds, warmup, progress, desc)
    return {name: len(x) / statistics.median(t) for name, t in times.items()}


def interleaved_times(
    fns: dict,
    x: torch.Tensor,
    rounds: int = 15,
    warmup: int = 2,
    progress: bool = False,
    desc: str = "timing",
) -> dict:
    """Seconds of each timed round of each function of `fns` on batch `x` (warm-up rounds
    dropped), every round running all of them in turn."""
    times: dict = {name: [] for name in fns}
    bar = tqdm(
        range(warmup + rounds),
        desc=desc,
        unit="round",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=progress_interval(),
    )
    for i in bar:
        for name, fn in fns.items():
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def interleaved_rate_quartiles(
    fns: dict, x: torch.Tensor, rounds: int = 15, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """As `interleaved_rates`, with the spread: images/s at the median round and at the 25th/75th
    percentiles of the round times (`img_per_s`, `img_per_s_q25`, `img_per_s_q75`)."""
    out = {}
    for name, t in interleaved_times(fns, x, rounds, warmup).items():
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        out[name] = {
            "img_per_s": len(x) / statistics.median(t),
            "img_per_s_q25": len(x) / q[2],
            "img_per_s_q75": len(x) / q[0],
        }
    return out


def interleaved_img_per_s(
    encoder: VisionTransformer,
    x: torch.Tensor,
    rs: list[int],
    rounds: int = 15,
    warmup: int = 2,
    progress: bool = False,
) -> dict[int, float]:
    """Median images/s of each r on batch `x`, every round running all r in turn."""
    fns = {r: (lambda images, r=r: tome_features(encoder, images, r)) for r in rs}
    desc = f"timing r={','.join(map(str, rs))} on {len(x)} images"
    return interleaved_rates(fns, x, rounds, warmup, progress, desc)


def tome_tradeoff(
    encoder: VisionTransformer,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    mean: list[float],
    std: list[float],
    rs: list[int],
    batch: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[TomeRow]:
    """Speed first (every r interleaved), then kNN top-1 per r: each step shows a progress bar
    when `progress`, so a run of minutes is never silent."""
    encoder = encoder.to(device).eval()
    x_train, y_train, x_test, y_test = splits
    x = normalize(x_test[:batch].to(device), mean, std)
    rates = interleaved_img_per_s(encoder, x, rs, progress=progress)
    base = rates[min(rs)]
    rows = []
    for i, r in enumerate(rs):
        common = dict(progress=progress)
        tag = f"r={r} ({i + 1}/{len(rs)})"
        f_train = tome_all_features(
            encoder, x_train, mean, std, r, batch, device, desc=f"{tag} train features", **common
        )
        f_test = tome_all_features(
            encoder, x_test, mean, std, r, batch, device, desc=f"{tag} test features", **common
        )
        probe = normalize(x_test[:1].to(device), mean, std)
        with torch.no_grad():
            tokens = tome_tokens(encoder, probe, r)[0].shape[1]
        top1 = knn_top1(f_train, y_train, f_test, y_test)
        rows.append(TomeRow(r, tokens, round(rates[r], 1), round(rates[r] / base, 3), top1))
    return rows


def plot_tradeoff(rows: list[TomeRow], path: str | Path) -> Path | None:
    """img/s vs top-1, one point per r; None when matplotlib is not installed."""
    try:
        import matplotlib  # optional dependency: mimkit[plot]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional dependency: mimkit[plot]
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r.img_per_s for r in rows], [100 * r.knn_top1 for r in rows], "o-")
    for row in rows:
        ax.annotate(
            f"r={row.r}",
            (row.img_per_s, 100 * row.knn_top1),
            textcoords="offset points",
            xytext=(4, 4),
        )
    tops = [100 * r.knn_top1 for r in rows]
    middle = (max(tops) + min(tops)) / 2
    half = max(5.0, (max(tops) - min(tops)) / 2 + 1)  # tiny differences must look tiny
    ax.set_ylim(middle - half, middle + half)
    ax.set_xlabel("images / s (feature extraction)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("Token merging: speed vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def rows_as_dicts(rows: list[TomeRow]) -> list[dict]:
    return [asdict(r) for r in rows]
