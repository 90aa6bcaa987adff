"""MAE's linear protocol: a frozen encoder, a fresh crop and flip of every image at every step,
the cls token, BatchNorm without affine + a linear head trained by LARS.

The cached-feature probe (`eval.linear`) trains on features extracted once from un-augmented
images, so it takes seconds; this one runs the encoder on every augmented batch, as the MAE
paper's linear evaluation does (main_linprobe.py: RandomResizedCrop(0.08-1) + flip, LARS with
base lr 0.1 scaled by batch / 256, no weight decay, 90 epochs with 10 of warmup, cls token
after the final norm), so its numbers can be read beside published ones.

Where this differs from the authors' recipe, on purpose:
- batch: MAE uses 16,384 on ImageNet (78 steps per epoch). A small dataset would get one step
  per epoch, so the batch follows the number of items (`mae_probe_batch`: items / 64 rounded to
  a power of two, 128-16,384). The lr stays the paper's (0.1 x 16,384 / 256 = 6.4) instead of
  shrinking with the batch: LARS steps each weight matrix by lr x 0.001 x its own norm, so the
  linear scaling rule would leave a batch-128 head almost where it started (0.5 % of its norm
  per step instead of 6.4 %; measured: chance accuracy on a two-class toy task);
- test images are scored at the model's size without MAE's resize-to-256 + centre-crop-224
  (`eval_crop` 1.0): on 28-pixel images the crop would cut the object; set 0.875 to match;
- an encoder without a cls token is probed on its average-pooled tokens, and says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimkit.data.transforms import normalize, random_resized_crop_flip
from mimkit.errors import DataError
from mimkit.eval.features import extract_features, pooled_tokens
from mimkit.eval.finetune import resize_to
from mimkit.eval.linear import LinearProbe, num_classes_of, probe_accuracy
from mimkit.models.vit import VisionTransformer
from mimkit.progress import progress_interval
from mimkit.train.lars import LARS
from mimkit.train.optim import lr_at, set_lr

MAE_BATCH = 16384  # the batch of the paper's linear probe, behind its lr of 6.4


@dataclass
class MAEProbeSettings:
    """MAE's linear-probe recipe; `batch_size` None = chosen from the number of items."""

    epochs: int = 90
    warmup_epochs: int = 10
    base_lr: float = 0.1  # lr = base_lr * 16384 / 256: the paper's, whatever our batch
    batch_size: int | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    crop_scale: tuple[float, float] = (0.08, 1.0)  # torchvision's RandomResizedCrop default
    pool: str = "cls"
    eval_crop: float = 1.0
    seed: int = 0


@dataclass
class MAEProbeResult:
    top1: float
    train_top1: float  # on un-augmented training images: beside top1, it shows underfitting
    lr: float
    batch_size: int
    epochs: int
    steps: int
    pool: str
    train_items: int
    test_items: int
    seconds: float


def mae_probe_batch(num_items: int) -> int:
    """items / 64 rounded to a power of two in [128, 16384] (MAE's batch), at most the items:
    78 steps per epoch on ImageNet, about as many here, instead of one."""
    if num_items < 1:
        raise DataError("the linear probe needs at least one training item")
    target = max(128, min(16384, num_items // 64))
    return min(1 << int(round(math.log2(target))), num_items)


def probe_pool(encoder: VisionTransformer, pool: str) -> str:
    """`pool`, or avg where the encoder has no cls token to probe."""
    if pool == "cls" and encoder.num_prefix_tokens == 0:
        print("linear probe (mae): the encoder has no cls token; probing average-pooled tokens")
        return "avg"
    return pool


def linear_probe_mae(
    encoder: VisionTransformer,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    mean: list[float],
    std: list[float],
    settings: MAEProbeSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> MAEProbeResult:
    """Train the head on fresh crops of uint8 `train` images through the frozen `encoder`,
    then score it once on `test` (and on un-augmented train images); deterministic per seed."""
    s = settings or MAEProbeSettings()
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = train, test
    pool = probe_pool(encoder, s.pool)
    batch = s.batch_size or mae_probe_batch(len(x_train))
    steps_per_epoch = max(1, len(x_train) // batch)
    total = steps_per_epoch * s.epochs
    lr = s.base_lr * MAE_BATCH / 256
    encoder = encoder.to(device).eval().requires_grad_(False)
    torch.manual_seed(s.seed)
    probe = LinearProbe(encoder.cfg.embed_dim, num_classes_of(y_train, y_test)).to(device)
    optimizer = LARS(probe.parameters(), weight_decay=s.weight_decay, momentum=s.momentum)
    gen = torch.Generator().manual_seed(s.seed)
    hw = encoder.cfg.image_hw
    step = 0
    bar = tqdm(
        total=total, desc=f"linear probe (mae, lr {lr:g}, batch {batch})", unit="step",
        disable=not progress, mininterval=progress_interval(),
    )  # fmt: skip
    for _ in range(s.epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = normalize(x_train[idx].to(device), mean, std)
            x = random_resized_crop_flip(x, hw, s.crop_scale, generator=_on(gen, device))
            with torch.no_grad():
                features = pooled_tokens(encoder, x, pool).float()
            set_lr(optimizer, lr_at(step, total, s.warmup_epochs * steps_per_epoch, lr))
            loss = F.cross_entropy(probe(features), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
    bar.close()

    def score(images: torch.Tensor, labels: torch.Tensor, desc: str) -> float:
        images = resize_to(images.float(), hw, s.eval_crop).round().clamp(0, 255)
        feats = extract_features(
            encoder, images, mean, std, device=device, progress=progress, desc=desc, pool=pool
        )
        return probe_accuracy(probe, feats.to(device), labels)

    return MAEProbeResult(
        top1=score(x_test, y_test, "test features"),
        train_top1=score(x_train, y_train, "train features"),
        lr=lr,
        batch_size=batch,
        epochs=s.epochs,
        steps=total,
        pool=pool,
        train_items=len(x_train),
        test_items=len(x_test),
        seconds=time.perf_counter() - start,
    )


def _on(gen: torch.Generator, device: torch.device | str) -> torch.Generator | None:
    """The host generator drives CPU crops; on an accelerator the crops come from its own
    default generator (seeded by torch.manual_seed above), as the training loop does."""
    return gen if torch.device(device).type == "cpu" else None
