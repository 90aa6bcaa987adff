"""The pretraining loop. It knows nothing about any method: it asks the model for a loss.

One optimiser step = `accum_steps` micro-batches. Everything that decides what happens next
(epoch, position in the epoch, optimiser, RNG states) is in the checkpoint, so stopping after N
steps and resuming gives bit-for-bit the same weights as running straight through on CPU.

Under `torchrun` each process trains on its rows of every global batch (see
`mimkit.train.distributed`); rank 0 logs and writes checkpoints, and the trainer state is kept
in global units, so a run can resume on another number of processes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mimkit.config import RunConfig, resolve_run_config
from mimkit.data.sources import TrainSource
from mimkit.data.transforms import augment_clips, crop_flip_theta, normalize, resample
from mimkit.errors import ConfigError, TrainingHalted
from mimkit.objectives.base import MaskedMethod
from mimkit.train.checkpoint import (
    MODEL_FILE,
    load_config_file,
    load_state_into,
    load_training_state,
    method_from_config,
    read_weights,
    save_checkpoint,
)
from mimkit.train.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    checkpoint_views,
    init_distributed,
    shutdown_distributed,
    wrap_model,
)
from mimkit.train.logging import MetricsWriter, progress_interval
from mimkit.train.optim import lr_at, param_groups, scaled_lr, set_lr
from mimkit.train.runtime import autocast, pick_amp_dtype, pick_device
from mimkit.train.speed import checkpoint_blocks, to_device_async, tune_backends, want_compile
from mimkit.train.step import GuardedStep

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    model: MaskedMethod
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


class _Fixed:
    """A state dict already gathered, in the shape `save_checkpoint` asks for."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _check_resumable(saved: RunConfig, cfg: RunConfig, folder: Path) -> None:
    if (saved.model, saved.masking, saved.method) != (cfg.model, cfg.masking, cfg.method):
        raise ConfigError(
            f"{folder}: the checkpoint there was trained with a different model config; "
            "use another out_dir or the same model settings to resume"
        )


def prepare_batch(
    images: torch.Tensor,
    cfg: RunConfig,
    device: torch.device,
    generator: torch.Generator,
    rows: slice | torch.Tensor | None = None,
    global_batch: int | None = None,
) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch on the device.

    With `rows`, `images` are those rows of a global batch of `global_batch` samples: the crop
    and flip parameters are drawn for the whole global batch and sliced, so each sample is
    augmented the same whatever the number of processes. (Clips and volumes are augmented per
    local batch: their split across processes is not yet invariant.)
    """
    x = normalize(to_device_async(images, device), cfg.data.mean, cfg.data.std)
    if x.ndim == 5:  # clips and volumes: temporal/depth crop + one spatial crop per sample
        return augment_clips(
            x,
            cfg.model.input_size,
            tuple(cfg.data.crop_scale),
            tuple(cfg.data.crop_ratio),
            cfg.data.hflip,
            generator,
        )
    theta = crop_flip_theta(
        global_batch or x.shape[0],
        x.shape[-2:],
        scale=tuple(cfg.data.crop_scale),
        ratio=tuple(cfg.data.crop_ratio),
        hflip=cfg.data.hflip,
        device=device,
        generator=generator,
    )
    if rows is not None:
        theta = theta[rows]
    return resample(x, theta, cfg.model.image_hw)


def draw_mask(
    model: MaskedMethod,
    x: torch.Tensor,
    generator: torch.Generator,
    rows: slice | torch.Tensor,
    global_batch: int,
):
    """The method's mask for the global batch, cut to this rank's rows (see `prepare_batch`)."""
    return model.draw_mask(global_batch, x.device, generator).select(rows)


def _resume_position(
    saved: dict, state: dict, micro_per_epoch: int, accum: int, global_batch: int
) -> None:
    """Carry the saved position over to this run's global batch (it changes with world size).

    Same global batch: exact continuation. Another one: the same epoch, resumed at the first
    whole optimiser step past the images already seen in it; the step count follows.
    """
    old = saved.get("global_batch", global_batch)
    if old == global_batch:
        return
    seen = state["micro_step"] * old
    micro = min(micro_per_epoch, -(-seen // global_batch))
    micro = -(-micro // accum) * accum
    if micro >= micro_per_epoch:
        state["epoch"], micro = state["epoch"] + 1, 0
    state["micro_step"] = micro
    state["step"] = state["epoch"] * (micro_per_epoch // accum) + micro // accum
    log.warning(
        "resuming with global batch %d (checkpoint used %d): continuing at epoch %d, "
        "step %d; the schedule is recomputed for the new batch",
        global_batch,
        old,
        state["epoch"],
        state["step"],
    )


def pretrain(cfg: RunConfig, resume: bool = True) -> PretrainResult:
    """Train `cfg` from scratch, or resume from `out_dir/checkpoint` when one exists.

    Launched by `torchrun` with several processes, each trains its share of every global batch
    (DDP, or FSDP with `train.parallel=fsdp`); the process group is closed on return.
    """
    ctx, device_name = init_distributed(cfg.train.device)
    try:
        return _pretrain(cfg, resume, ctx, device_name)
    finally:
        shutdown_distributed()


def _pretrain(cfg: RunConfig, resume: bool, ctx: DistContext, device_name: str) -> PretrainResult:
    cfg = resolve_run_config(cfg)
    tc = cfg.train
    if tc.accum_steps < 1 or tc.batch_size < 1 or tc.epochs < 1:
        raise ConfigError("train.batch_size, train.accum_steps and train.epochs must be >= 1")
    device = pick_device(device_name)
    amp_dtype = pick_amp_dtype(tc.amp, device)
    compile_step = want_compile(tc.compile, device)
    tune_backends(device)
    torch.manual_seed(tc.seed)
    model = method_from_config(cfg).to(device)
    cfg.method = model.settings  # what the method read from its teacher (its width) is saved too
    if tc.activation_checkpointing:
        checkpoint_blocks(model)
    source = TrainSource(cfg.data, cfg.model.in_chans, cfg.model.image_hw, tc.seed)
    global_batch = tc.batch_size * ctx.world_size
    micro_per_epoch = source.steps_per_epoch(global_batch) // tc.accum_steps * tc.accum_steps
    if micro_per_epoch == 0:
        raise ConfigError(
            f"train.accum_steps={tc.accum_steps} micro-batches do not fit in one epoch of "
            f"{source.num_items} items at a global batch of {global_batch} "
            f"(train.batch_size={tc.batch_size} x {ctx.world_size} processes)"
        )
    steps_per_epoch = micro_per_epoch // tc.accum_steps
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    effective_batch = global_batch * tc.accum_steps
    peak_lr = tc.lr if tc.lr is not None else scaled_lr(tc.base_lr, effective_batch)

    out = Path(cfg.out_dir)
    ckpt = checkpoint_dir(cfg)
    resuming = resume and (ckpt / MODEL_FILE).is_file()
    if resuming:
        _check_resumable(load_config_file(ckpt), cfg, ckpt)
        load_state_into(model, read_weights(ckpt / MODEL_FILE), str(ckpt / MODEL_FILE))
    train_model = wrap_model(model, ctx, tc.parallel, device)
    optimizer = torch.optim.AdamW(
        param_groups(train_model, tc.weight_decay),
        lr=peak_lr,
        betas=tuple(tc.betas),
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    guard = GuardedStep(optimizer, scaler, list(train_model.parameters()), tc.clip_grad, device)
    forward = torch.compile(train_model) if compile_step else train_model
    generator = torch.Generator(device).manual_seed(tc.seed)
    model_view, optim_view = checkpoint_views(model, train_model, optimizer, ctx, tc.parallel)

    state = {"epoch": 0, "micro_step": 0, "step": 0, "nonfinite": 0, "corrupt": 0, "images": 0}
    if resuming:
        saved, rng = load_training_state(ckpt, optim_view)
        state.update({k: saved[k] for k in state if k in saved})
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        _restore_rng(generator, rng)
        _resume_position(saved, state, micro_per_epoch, tc.accum_steps, global_batch)
        log.info("resumed from %s at step %d (epoch %d)", ckpt, state["step"], state["epoch"])
    metrics = MetricsWriter(out / "metrics.jsonl") if ctx.is_main else None

    def record(**fields) -> None:
        if metrics is not None:
            metrics.write(**fields)

    if state["step"] == 0:
        record(
            event="start",
            device=str(device),
            amp=str(amp_dtype),
            items=source.num_items,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            peak_lr=peak_lr,
            effective_batch=effective_batch,
            world_size=ctx.world_size,
            parallel=tc.parallel if ctx.enabled else "none",
            compile=compile_step,
            sync_free_steps=guard.sync_free,
        )

    def sync_counts() -> None:
        """Read back the device-side counters (a host sync: only at log and save times)."""
        nonlocal window_loss_sum, window_n, corrupt_since
        skipped, loss_sum, applied = guard.read_back()
        window_loss_sum += loss_sum
        window_n += applied
        corrupt = all_reduce_mean(torch.tensor(float(corrupt_since), device=device), ctx)
        state["corrupt"] += round(corrupt.item() * ctx.world_size)
        corrupt_since = 0
        if skipped:
            state["nonfinite"] += skipped
            record(event="nonfinite", step=state["step"], count=state["nonfinite"])
            log.warning("%d non-finite step(s) skipped on the device", skipped)

    def save() -> None:
        sync_counts()
        trainer_state = dict(state, global_batch=global_batch)
        if scaler.is_enabled():
            trainer_state["scaler"] = scaler.state_dict()
        # every rank takes part (FSDP gathers shards); rank 0 writes
        model_state, optim_state = model_view.state_dict(), optim_view.state_dict()
        if ctx.is_main:
            save_checkpoint(
                ckpt,
                _Fixed(model_state),
                cfg,
                _Fixed(optim_state),
                trainer_state,
                _rng_state(generator),
            )
        barrier(ctx)

    def halt_if_too_many() -> None:
        if state["nonfinite"] >= tc.max_nonfinite:
            bar.close()
            raise TrainingHalted(
                f"halted after {state['nonfinite']} non-finite losses (train.max_nonfinite); "
                f"the last good checkpoint is in {ckpt}"
            )

    stop_at = min(total_steps, tc.max_steps) if tc.max_steps is not None else total_steps
    bar = tqdm(
        total=stop_at * effective_batch,
        initial=state["step"] * effective_batch,
        unit="img",
        unit_scale=True,
        disable=not (tc.progress and ctx.is_main),
        desc="pretrain",
        dynamic_ncols=True,
        mininterval=progress_interval(),
    )
    train_model.train()
    last_loss = math.nan
    window_t, window_imgs, corrupt_since = time.perf_counter(), 0, 0
    window_loss_sum, window_n = 0.0, 0
    rows = ctx.rows(tc.batch_size)
    while state["step"] < stop_at:
        epoch = state["epoch"]
        batches = source.batches(
            epoch,
            tc.batch_size,
            start_step=state["micro_step"],
            shard=(ctx.rank, ctx.world_size),
        )
        micro_loss = torch.zeros((), device=device)
        for batch in batches:
            if state["micro_step"] >= micro_per_epoch or state["step"] >= stop_at:
                break
            corrupt_since += batch.skipped
            if batch.skipped:
                log.warning("skipped %d corrupt image(s) in this batch", batch.skipped)
            # augmentation and masks are drawn for the whole global batch; rows of items that
            # failed to decode are dropped so every surviving item keeps its own draws
            mine = rows if batch.kept is None else torch.arange(global_batch)[rows][batch.kept]
            x = prepare_batch(batch.images, cfg, device, generator, mine, global_batch)
            mask = draw_mask(model, x, generator, mine, global_batch)
            with autocast(device, amp_dtype):
                loss = forward(x, mask=mask).loss
            scaler.scale(loss / tc.accum_steps).backward()
            micro_loss += loss.detach() / tc.accum_steps
            state["micro_step"] += 1
            state["images"] += global_batch
            if state["micro_step"] % tc.accum_steps:
                continue
            # one optimiser step, on the loss averaged over all ranks
            lr = lr_at(state["step"], total_steps, warmup_steps, peak_lr, tc.min_lr)
            set_lr(optimizer, lr)
            applied = guard.step(all_reduce_mean(micro_loss, ctx))
            micro_loss = torch.zeros((), device=device)
            if applied is False:
                state["nonfinite"] += 1
                record(event="nonfinite", step=state["step"], count=state["nonfinite"])
                log.warning(
                    "non-finite loss at step %d; step skipped (%d so far)",
                    state["step"],
                    state["nonfinite"],
                )
                halt_if_too_many()
                continue
            state["step"] += 1
            bar.update(effective_batch)
            window_imgs += effective_batch
            if state["step"] % tc.log_every == 0 or state["step"] == stop_at:
                sync_counts()
                halt_if_too_many()
                elapsed = time.perf_counter() - window_t
                rate = window_imgs / elapsed if elapsed > 0 else 0.0
                window_loss = window_loss_sum / window_n if window_n else math.nan
                last_loss = window_loss
                record(
                    event="train",
                    step=state["step"],
                    epoch=epoch,
                    loss=window_loss,
                    lr=lr,
                    img_per_s=round(rate, 1),
                    nonfinite_skipped=state["nonfinite"],
                    corrupt_skipped=state["corrupt"],
                )
                bar.set_postfix(loss=f"{window_loss:.4f}", lr=f"{lr:.2e}")
                window_t, window_imgs = time.perf_counter(), 0
                window_loss_sum, window_n = 0.0, 0
        if state["micro_step"] >= micro_per_epoch:
            state["epoch"] += 1
            state["micro_step"] = 0
            if state["epoch"] % tc.save_every == 0 and state["step"] < stop_at:
                save()
    bar.close()
    save()
    record(
        event="end",
        step=state["step"],
        loss=last_loss,
        nonfinite_skipped=state["nonfinite"],
        corrupt_skipped=state["corrupt"],
    )
    if state["corrupt"] and ctx.is_main:
        log.warning("%d corrupt image(s) were skipped during training", state["corrupt"])
    samples = source.sample(cfg.eval.reconstruction_images)
    return PretrainResult(
        model, cfg, ckpt, state["step"], last_loss, state["nonfinite"], state["corrupt"], samples
    )
