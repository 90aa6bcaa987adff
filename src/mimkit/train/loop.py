"""The pretraining loop. It knows nothing about any method: it asks the model for a loss.

One optimiser step = `accum_steps` micro-batches. Everything that decides what happens next
(epoch, position in the epoch, optimiser, RNG states) is in the checkpoint, so stopping after N
steps and resuming gives bit-for-bit the same weights as running straight through on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mimkit.config import RunConfig
from mimkit.data.sources import TrainSource
from mimkit.data.transforms import normalize, random_resized_crop_flip
from mimkit.errors import ConfigError, TrainingHalted
from mimkit.models.registry import resolve_model_config
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.checkpoint import (
    MODEL_FILE,
    load_config_file,
    load_state_into,
    load_training_state,
    read_weights,
    save_checkpoint,
)
from mimkit.train.logging import MetricsWriter, progress_interval
from mimkit.train.optim import lr_at, param_groups, scaled_lr, set_lr
from mimkit.train.runtime import autocast, pick_amp_dtype, pick_device

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    model: MaskedAutoencoder
    cfg: RunConfig
    checkpoint: Path
    steps: int
    final_loss: float
    nonfinite_skipped: int
    corrupt_skipped: int
    sample_images: torch.Tensor  # a few uint8 training images, for reconstruction pictures


def checkpoint_dir(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / "checkpoint"


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(generator: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    if "generator" in state:
        generator.set_state(state["generator"])
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def _check_resumable(saved: RunConfig, cfg: RunConfig, folder: Path) -> None:
    if saved.model != cfg.model:
        raise ConfigError(
            f"{folder}: the checkpoint there was trained with a different model config; "
            "use another out_dir or the same model settings to resume"
        )


def prepare_batch(
    images: torch.Tensor, cfg: RunConfig, device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch on the device."""
    x = normalize(images.to(device, non_blocking=True), cfg.data.mean, cfg.data.std)
    return random_resized_crop_flip(
        x,
        cfg.model.image_hw,
        scale=tuple(cfg.data.crop_scale),
        ratio=tuple(cfg.data.crop_ratio),
        hflip=cfg.data.hflip,
        generator=generator,
    )


def pretrain(cfg: RunConfig, resume: bool = True) -> PretrainResult:
    """Train `cfg` from scratch, or resume from `out_dir/checkpoint` when one exists."""
    cfg.model = resolve_model_config(cfg.model)
    tc = cfg.train
    if tc.accum_steps < 1 or tc.batch_size < 1 or tc.epochs < 1:
        raise ConfigError("train.batch_size, train.accum_steps and train.epochs must be >= 1")
    device = pick_device(tc.device)
    amp_dtype = pick_amp_dtype(tc.amp, device)
    torch.manual_seed(tc.seed)
    model = MaskedAutoencoder(cfg.model).to(device)
    source = TrainSource(cfg.data, cfg.model.in_chans, cfg.model.image_hw, tc.seed)
    micro_per_epoch = source.steps_per_epoch(tc.batch_size) // tc.accum_steps * tc.accum_steps
    if micro_per_epoch == 0:
        raise ConfigError(
            f"train.accum_steps={tc.accum_steps} micro-batches do not fit in one epoch of "
            f"{source.num_items} items at train.batch_size={tc.batch_size}"
        )
    steps_per_epoch = micro_per_epoch // tc.accum_steps
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    effective_batch = tc.batch_size * tc.accum_steps
    peak_lr = tc.lr if tc.lr is not None else scaled_lr(tc.base_lr, effective_batch)
    optimizer = torch.optim.AdamW(
        param_groups(model, tc.weight_decay),
        lr=peak_lr,
        betas=tuple(tc.betas),
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator(device).manual_seed(tc.seed)

    out = Path(cfg.out_dir)
    ckpt = checkpoint_dir(cfg)
    state = {"epoch": 0, "micro_step": 0, "step": 0, "nonfinite": 0, "corrupt": 0, "images": 0}
    if resume and (ckpt / MODEL_FILE).is_file():
        _check_resumable(load_config_file(ckpt), cfg, ckpt)
        load_state_into(model, read_weights(ckpt / MODEL_FILE), str(ckpt / MODEL_FILE))
        saved, rng = load_training_state(ckpt, optimizer)
        state.update({k: saved[k] for k in state if k in saved})
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        _restore_rng(generator, rng)
        log.info("resumed from %s at step %d (epoch %d)", ckpt, state["step"], state["epoch"])
    metrics = MetricsWriter(out / "metrics.jsonl")
    if state["step"] == 0:
        metrics.write(
            event="start",
            device=str(device),
            amp=str(amp_dtype),
            items=source.num_items,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            peak_lr=peak_lr,
            effective_batch=effective_batch,
        )

    def save() -> None:
        trainer_state = dict(state, scaler=scaler.state_dict() if scaler.is_enabled() else None)
        if trainer_state["scaler"] is None:
            trainer_state.pop("scaler")
        save_checkpoint(ckpt, model, cfg, optimizer, trainer_state, _rng_state(generator))

    stop_at = min(total_steps, tc.max_steps) if tc.max_steps is not None else total_steps
    bar = tqdm(
        total=stop_at * effective_batch,
        initial=state["step"] * effective_batch,
        unit="img",
        unit_scale=True,
        disable=not tc.progress,
        desc="pretrain",
        dynamic_ncols=True,
        mininterval=progress_interval(),
    )
    model.train()
    last_loss = math.nan
    window_loss, window_n, window_t, window_imgs = 0.0, 0, time.perf_counter(), 0
    while state["step"] < stop_at:
        epoch = state["epoch"]
        batches = source.batches(epoch, tc.batch_size, start_step=state["micro_step"])
        micro_loss = torch.zeros((), device=device)
        for batch in batches:
            if state["micro_step"] >= micro_per_epoch or state["step"] >= stop_at:
                break
            state["corrupt"] += batch.skipped
            if batch.skipped:
                log.warning(
                    "skipped %d corrupt image(s) (total %d)", batch.skipped, state["corrupt"]
                )
            x = prepare_batch(batch.images, cfg, device, generator)
            with autocast(device, amp_dtype):
                loss = model(x, generator=generator).loss
            scaler.scale(loss / tc.accum_steps).backward()
            micro_loss += loss.detach() / tc.accum_steps
            state["micro_step"] += 1
            state["images"] += x.shape[0]
            if state["micro_step"] % tc.accum_steps:
                continue
            # one optimiser step
            lr = lr_at(state["step"], total_steps, warmup_steps, peak_lr, tc.min_lr)
            set_lr(optimizer, lr)
            loss_value = micro_loss.item()
            micro_loss = torch.zeros((), device=device)
            if not math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                state["nonfinite"] += 1
                metrics.write(event="nonfinite", step=state["step"], count=state["nonfinite"])
                log.warning(
                    "non-finite loss at step %d; step skipped (%d so far)",
                    state["step"],
                    state["nonfinite"],
                )
                if state["nonfinite"] >= tc.max_nonfinite:
                    bar.close()
                    raise TrainingHalted(
                        f"halted after {state['nonfinite']} non-finite losses (train.max_nonfinite); "
                        f"the last good checkpoint is in {ckpt}"
                    )
                continue
            if tc.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            last_loss = loss_value
            bar.update(effective_batch)
            window_loss += loss_value
            window_n += 1
            window_imgs += effective_batch
            if state["step"] % tc.log_every == 0 or state["step"] == stop_at:
                elapsed = time.perf_counter() - window_t
                rate = window_imgs / elapsed if elapsed > 0 else 0.0
                metrics.write(
                    event="train",
                    step=state["step"],
                    epoch=epoch,
                    loss=window_loss / window_n,
                    lr=lr,
                    img_per_s=round(rate, 1),
                    nonfinite_skipped=state["nonfinite"],
                    corrupt_skipped=state["corrupt"],
                )
                bar.set_postfix(loss=f"{window_loss / window_n:.4f}", lr=f"{lr:.2e}")
                window_loss, window_n, window_t, window_imgs = 0.0, 0, time.perf_counter(), 0
        if state["micro_step"] >= micro_per_epoch:
            state["epoch"] += 1
            state["micro_step"] = 0
            if state["epoch"] % tc.save_every == 0 and state["step"] < stop_at:
                save()
    bar.close()
    save()
    metrics.write(
        event="end",
        step=state["step"],
        loss=last_loss,
        nonfinite_skipped=state["nonfinite"],
        corrupt_skipped=state["corrupt"],
    )
    if state["corrupt"]:
        log.warning("%d corrupt image(s) were skipped during training", state["corrupt"])
    samples = source.sample(cfg.eval.reconstruction_images)
    return PretrainResult(
        model, cfg, ckpt, state["step"], last_loss, state["nonfinite"], state["corrupt"], samples
    )
