"""The training loop, for pretraining, fine-tuning and distillation alike.

The loop knows nothing about any method or task: it asks a `BatchLoss` for the loss of each
micro-batch (`MaskedLoss` for pretraining here, `MixedLabelLoss` in `mimkit.eval.finetune`).
One optimiser step = `accum_steps` micro-batches, taken by `GuardedStep`, which skips a
non-finite loss without reading it back on the GPU. Everything that decides what happens next
(`TrainerState`, optimiser, RNG states) is in the checkpoint, so stopping after N steps and
resuming gives bit-for-bit the same weights as running straight through on CPU.

Under `torchrun` each process trains on its rows of every global batch (see
`mimkit.train.distributed`); rank 0 logs and writes checkpoints, and the trainer state is kept
in global units, so a run can resume on another number of processes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from mimkit.config import RunConfig, check_pretraining, resolve_run_config
from mimkit.data.decode import decode_on
from mimkit.data.geotiff import NODATA_SOURCES, fill_nodata
from mimkit.data.multi import normalize_inputs, resample_inputs, sample_count
from mimkit.data.points import augment_points
from mimkit.data.sources import Batch, TrainSource
from mimkit.data.transforms import augment_clips, crop_flip_theta, normalize, resample
from mimkit.errors import ConfigError, RunInterrupted, TrainingHalted
from mimkit.masking import Mask
from mimkit.objectives.base import MaskedMethod, update_teachers
from mimkit.patches import patchify
from mimkit.train.checkpoint import Checkpointer, load_config_file, method_from_config
from mimkit.train.distributed import (
    DistContext,
    all_reduce_mean,
    checkpoint_views,
    init_distributed,
    shutdown_distributed,
    wrap_model,
)
from mimkit.train.lock import run_lock, stop_requested, stop_signals
from mimkit.train.logging import MetricsWriter, progress_interval
from mimkit.train.optim import param_groups, set_lr
from mimkit.train.runtime import autocast, describe_amp, pick_amp_dtype, pick_device
from mimkit.train.speed import checkpoint_blocks, to_device_async, tune_backends, want_compile
from mimkit.train.start import InitialWeights, check_fresh_start, start_from
from mimkit.train.state import Schedule, TrainerState
from mimkit.train.step import GuardedStep
from mimkit.train.trackers import Trackers, check_trackers

log = logging.getLogger(__name__)
Rows = slice | torch.Tensor  # this process's rows of a global batch


class BatchLoss(Protocol):
    """The loss of one micro-batch: `x` is this process's augmented rows of the global batch,
    `draw` the global index of the micro-batch (a seed for per-batch draws)."""

    def __call__(self, x: torch.Tensor, batch: Batch, rows: Rows, draw: int) -> torch.Tensor: ...


@dataclass
class LoopParts:
    """What the loop works with; `pretrain` and `finetune` build it with `assemble`."""

    cfg: RunConfig  # the data section augments, the train section drives the loop
    source: TrainSource
    schedule: Schedule
    guard: GuardedStep  # optimiser, scaler and the non-finite guard
    checkpointer: Checkpointer
    generator: torch.Generator  # augmentation and mask draws
    ctx: DistContext
    device: torch.device
    amp_dtype: torch.dtype | None
    forward: Callable  # the wrapped (and maybe compiled) module the loss is asked of
    model: nn.Module  # what the checkpoint holds; its EMA teachers follow it after each step
    compiled: bool
    name: str  # progress-bar label
    picture: Callable[[], Any] | None = None  # a PIL image logged after each save (pretraining)


def train_loop(run: LoopParts, state: TrainerState, batch_loss: BatchLoss) -> float:
    """Train from `state` to `run.schedule.stop_at`, save, and return the last logged loss."""
    plan, tc, ctx = run.schedule, run.cfg.train, run.ctx
    books = Bookkeeper(run, state)
    run.forward.train()
    rows = ctx.rows(tc.batch_size)
    micro_loss = torch.zeros((), device=run.device)
    while state.step < plan.stop_at:
        # an epoch's item order is seeded by its number, so a resumed epoch skips what it did
        batches = run.source.batches(
            state.epoch, tc.batch_size, state.micro_step, shard=(ctx.rank, ctx.world_size)
        )
        for batch in batches:
            if state.micro_step >= plan.micro_per_epoch or state.step >= plan.stop_at:
                break
            # augmentation and masks are drawn for the whole global batch; rows of items that
            # failed to decode are dropped so every surviving item keeps its own draws
            mine = books.rows_kept(batch, rows)
            x = prepare_batch(
                batch.images, run.cfg, run.device, run.generator, mine, plan.global_batch
            )
            draw = state.epoch * plan.micro_per_epoch + state.micro_step
            loss = batch_loss(x, batch, mine, draw)
            # gradients accumulate over accum_steps micro-batches
            run.guard.scaler.scale(loss / plan.accum_steps).backward()
            micro_loss += loss.detach() / plan.accum_steps
            state.micro_step += 1
            state.images += plan.global_batch
            if state.micro_step % plan.accum_steps:
                continue
            # one optimiser step on the loss averaged over ranks; a non-finite one is skipped
            lr = plan.lr(state.step)
            set_lr(run.guard.optimizer, lr)
            applied = run.guard.step(all_reduce_mean(micro_loss, ctx))
            micro_loss = torch.zeros((), device=run.device)
            if applied is False:  # checked mode knows now; sync-free counts at read-back
                books.skipped()
                continue
            state.step += 1
            update_teachers(run.model, state.step / plan.total_steps)
            books.stepped(lr)
        if state.micro_step >= plan.micro_per_epoch:
            # the epoch is done: the next starts at its first micro-batch
            state.epoch, state.micro_step = state.epoch + 1, 0
            if state.epoch % tc.save_every == 0 and state.step < plan.stop_at:
                books.save()
    books.finish()
    return books.last_loss


class Bookkeeper:
    """Counters, metrics lines, the progress bar and the non-finite halt, off the loop's page.

    Device-side counts (sync-free skips, the loss window) and corrupt-image counts of every rank
    are read back only at log and save times.
    """

    def __init__(self, run: LoopParts, state: TrainerState) -> None:
        self.run, self.state, plan = run, state, run.schedule
        self.last_loss = math.nan  # mean loss of the last logged window
        self.metrics = None
        if run.ctx.is_main:
            sinks = Trackers.open(run.cfg.train.loggers, run.cfg.out_dir, asdict(run.cfg))
            self.metrics = MetricsWriter(Path(run.cfg.out_dir) / "metrics.jsonl", sinks)
        self.bar = tqdm(
            total=plan.stop_at * plan.effective_batch,
            initial=state.step * plan.effective_batch,
            unit="img",
            unit_scale=True,
            disable=not (run.cfg.train.progress and run.ctx.is_main),
            desc=run.name,
            dynamic_ncols=True,
            mininterval=progress_interval(),
        )
        self._window_start, self._window_imgs, self._corrupt_since = time.perf_counter(), 0, 0
        self._loss_sum, self._loss_n = 0.0, 0
        if state.step == 0:
            self.record(event="start", **self._start_fields())

    def _start_fields(self) -> dict[str, Any]:
        run, plan, tc = self.run, self.run.schedule, self.run.cfg.train
        return dict(
            device=str(run.device),
            amp=str(run.amp_dtype),
            items=run.source.num_items,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
            peak_lr=plan.peak_lr,
            effective_batch=plan.effective_batch,
            world_size=run.ctx.world_size,
            parallel=tc.parallel if run.ctx.enabled else "none",
            compile=run.compiled,
            sync_free_steps=run.guard.sync_free,
            **self._skip_reasons(),
        )

    def _skip_reasons(self) -> dict[str, Any]:
        """Files the source refused when it scanned or loaded them, by reason (each file once;
        `corrupt_skipped` counts the draws of unusable files in batches, every epoch)."""
        return {"skipped_items": dict(getattr(self.run.source, "skipped", {}))}

    def record(self, **fields: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(**fields)

    def rows_kept(self, batch: Batch, rows: slice) -> Rows:
        """This rank's rows of the global batch, less those of items that failed to decode."""
        if batch.skipped:
            self._corrupt_since += batch.skipped
            log.warning("skipped %d corrupt image(s) in this batch", batch.skipped)
        if batch.kept is None:
            return rows
        return torch.arange(self.run.schedule.global_batch)[rows][batch.kept]

    def skipped(self) -> None:
        """A non-finite step the checked guard refused: count it, and halt after too many."""
        self.state.nonfinite += 1
        self.record(event="nonfinite", step=self.state.step, count=self.state.nonfinite)
        log.warning(
            "non-finite loss at step %d; step skipped (%d so far)",
            self.state.step,
            self.state.nonfinite,
        )
        self._halt_if_too_many()

    def stepped(self, lr: float) -> None:
        """After an optimiser step: the bar; at log times a metrics line (a host sync); a save
        every `train.save_every_steps`; and on SIGINT/SIGTERM a save, then a clean stop."""
        state, plan, tc = self.state, self.run.schedule, self.run.cfg.train
        self.bar.update(plan.effective_batch)
        self._window_imgs += plan.effective_batch
        log_time = state.step % tc.log_every == 0 or state.step == plan.stop_at
        if log_time:
            self._log(lr)
        if state.step >= plan.stop_at:
            return  # `finish` saves
        if self._stop_asked(log_time):
            self._save_and_stop()
        if tc.save_every_steps and state.step % tc.save_every_steps == 0:
            self.save()

    def _stop_asked(self, log_time: bool) -> bool:
        """Whether a signal asked to stop; with several processes, all agree at log times."""
        asked = stop_requested() is not None
        if not self.run.ctx.enabled:
            return asked
        if not log_time:
            return False
        flag = torch.tensor(float(asked), device=self.run.device)
        return all_reduce_mean(flag, self.run.ctx).item() > 0

    def _save_and_stop(self) -> None:
        self.save()
        self.bar.close()
        self.record(event="interrupted", step=self.state.step, signal=stop_requested())
        raise RunInterrupted(
            f"stopped by {stop_requested() or 'a signal'} at step {self.state.step}; "
            f"checkpoint saved in {self.run.checkpointer.folder}; run the same command to resume"
        )

    def _log(self, lr: float) -> None:
        state = self.state
        grad_norm = self.run.guard.read_grad_norm()
        self._sync()
        self._halt_if_too_many()
        elapsed = time.perf_counter() - self._window_start
        rate = self._window_imgs / elapsed if elapsed > 0 else 0.0
        self.last_loss = self._loss_sum / self._loss_n if self._loss_n else math.nan
        self.record(
            event="train",
            step=state.step,
            epoch=state.epoch,
            loss=self.last_loss,
            lr=lr,
            img_per_s=round(rate, 1),
            grad_norm=grad_norm,
            nonfinite_skipped=state.nonfinite,
            corrupt_skipped=state.corrupt,
            **self._skip_reasons(),
        )
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{lr:.2e}")
        self._window_start, self._window_imgs = time.perf_counter(), 0
        self._loss_sum, self._loss_n = 0.0, 0

    def save(self) -> None:
        self._sync()
        self.run.checkpointer.save(self.state)
        image = self.run.picture() if self.run.picture and self.metrics else None
        if image is not None:
            self.metrics.picture("reconstructions", self.state.step, image)

    def finish(self) -> None:
        """Close the bar, write the final checkpoint and the `end` line."""
        self.bar.close()
        self.save()
        state = self.state
        self.record(
            event="end",
            step=state.step,
            loss=self.last_loss,
            nonfinite_skipped=state.nonfinite,
            corrupt_skipped=state.corrupt,
            **self._skip_reasons(),
        )
        if self.metrics is not None:
            self.metrics.close()
        if state.corrupt and self.run.ctx.is_main:
            log.warning("%d corrupt image(s) were skipped during training", state.corrupt)
        reasons = self._skip_reasons()["skipped_items"]
        if reasons and self.run.ctx.is_main:
            log.warning(
                "skipped items by reason: %s",
                ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())),
            )

    def _sync(self) -> None:
        """Read back the device-side counters and sum the corrupt counts of every rank."""
        run, state = self.run, self.state
        skipped, loss_sum, applied = run.guard.read_back()
        self._loss_sum += loss_sum
        self._loss_n += applied
        corrupt = torch.tensor(float(self._corrupt_since), device=run.device)
        state.corrupt += round(all_reduce_mean(corrupt, run.ctx).item() * run.ctx.world_size)
        self._corrupt_since = 0
        if skipped:
            state.nonfinite += skipped
            self.record(event="nonfinite", step=state.step, count=state.nonfinite)
            log.warning("%d non-finite step(s) skipped on the device", skipped)

    def _halt_if_too_many(self) -> None:
        if self.state.nonfinite >= self.run.cfg.train.max_nonfinite:
            self.bar.close()
            good = self.run.checkpointer.last_good()
            kept = (
                f"the last good checkpoint is in {good}"
                if good is not None
                else "no checkpoint without non-finite steps was saved before the halt"
            )
            raise TrainingHalted(
                f"halted after {self.state.nonfinite} non-finite losses (train.max_nonfinite); "
                + kept
            )


def assemble(
    cfg: RunConfig,
    ctx: DistContext,
    device: torch.device,
    model: nn.Module,
    trained: nn.Module,
    groups: Callable[[nn.Module], list[dict]],
    source: TrainSource,
    checkpointer: Checkpointer,
    name: str,
) -> tuple[LoopParts, TrainerState]:
    """Wrap, optimise and resume: the setup pretraining and fine-tuning share.

    `model` is what the checkpoint holds (its weights already loaded when resuming); `trained`
    is what returns the loss (`model` itself, or a module around it); `groups` gives the
    optimiser's parameter groups of the wrapped module.
    """
    tc = cfg.train
    amp_dtype = pick_amp_dtype(tc.amp, device)
    if ctx.is_main:
        log.info(describe_amp(tc.amp, device, amp_dtype))
    compiled = want_compile(tc.compile, device)
    schedule = Schedule.plan(tc, source, ctx.world_size)
    wrapped = wrap_model(trained, ctx, tc.parallel, device)
    optimizer = torch.optim.AdamW(
        groups(wrapped), lr=schedule.peak_lr, betas=tuple(tc.betas), fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    guard = GuardedStep(optimizer, scaler, list(wrapped.parameters()), tc.clip_grad, device)
    forward = torch.compile(wrapped) if compiled else wrapped
    generator = torch.Generator(device).manual_seed(tc.seed)
    views = checkpoint_views(model, wrapped, optimizer, ctx, tc.parallel)
    state = checkpointer.resume_or_start(*views, scaler, generator)
    state.carry_over(schedule.global_batch, schedule.micro_per_epoch, tc.accum_steps)
    if checkpointer.found:
        log.info(
            "resumed from %s at step %d (epoch %d)", checkpointer.folder, state.step, state.epoch
        )
    parts = LoopParts(
        cfg=cfg,
        source=source,
        schedule=schedule,
        guard=guard,
        checkpointer=checkpointer,
        generator=generator,
        ctx=ctx,
        device=device,
        amp_dtype=amp_dtype,
        forward=forward,
        model=model,
        compiled=compiled,
        name=name,
    )
    return parts, state


# ---- pretraining ------------------------------------------------------------------------------


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


def _check_resumable(saved: RunConfig, cfg: RunConfig, folder: Path) -> None:
    check_fresh_start(saved.model.init_from, cfg.model.init_from, folder)
    if (saved.model, saved.masking, saved.method) != (cfg.model, cfg.masking, cfg.method):
        raise ConfigError(
            f"{folder}: the checkpoint there was trained with a different model config; "
            "use another out_dir or the same model settings to resume"
        )


def prepare_batch(
    images: torch.Tensor | dict[str, torch.Tensor],
    cfg: RunConfig,
    device: torch.device,
    generator: torch.Generator,
    rows: Rows | None = None,
    global_batch: int | None = None,
) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch on the device.

    A batch of several inputs per sample (`Inputs`, from `data.source: multi`) comes back as
    `Inputs` of float tensors, each input normalised with its own `data.inputs` statistics and
    all inputs of a sample given the same crop and flip (aligned modalities stay aligned).

    With `rows`, `images` are those rows of a global batch of `global_batch` samples: the crop
    and flip parameters are drawn for the whole global batch and sliced, so each sample is
    augmented the same whatever the number of processes. (Clips and volumes are augmented per
    local batch: their split across processes is not yet invariant.)
    """
    dc = cfg.data
    if dc.source == "points":  # float clouds (B, P, 3): coordinates, augmented as clouds
        clouds = to_device_async(images, device)
        return augment_points(
            clouds, generator, tuple(dc.point_scale), dc.point_translate, dc.point_rotate,
            dc.point_jitter, rows, global_batch,
        )  # fmt: skip
    if isinstance(images, dict):  # several inputs per sample: each its own statistics, one crop
        moved = {name: to_device_async(x, device) for name, x in images.items()}
        x = normalize_inputs(moved, dc.inputs)
        theta = crop_flip_theta(
            global_batch or sample_count(x), next(iter(x.values())).shape[-2:],
            scale=tuple(dc.crop_scale), ratio=tuple(dc.crop_ratio), hflip=dc.hflip,
            device=device, generator=generator,
        )  # fmt: skip
        theta = theta if rows is None else theta[rows]
        return resample_inputs(x, dc.inputs, theta, cfg.model.image_hw)
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
    model: MaskedMethod, x: torch.Tensor, generator: torch.Generator, rows: Rows, global_batch: int
) -> Any:
    """The method's mask for the global batch, cut to this rank's rows (see `prepare_batch`)."""
    return model.draw_mask(global_batch, x.device, generator).select(rows)


@dataclass
class MaskedLoss:
    """Pretraining's batch loss: the method's mask for these rows, then the method's loss."""

    model: MaskedMethod
    forward: Callable
    generator: torch.Generator
    global_batch: int
    device: torch.device
    amp_dtype: torch.dtype | None
    nodata_patch: tuple[int, ...] | None = None  # the patch shape, when inputs may hold nodata

    def __call__(self, x: torch.Tensor, batch: Batch, rows: Rows, draw: int) -> torch.Tensor:
        mask = draw_mask(self.model, x, self.generator, rows, self.global_batch)
        if self.nodata_patch is not None:
            x, mask = without_nodata(x, mask, self.nodata_patch)
        with autocast(self.device, self.amp_dtype):
            return self.forward(x, mask=mask).loss


def without_nodata(x: torch.Tensor, mask: Mask, patch: tuple[int, ...]) -> tuple[torch.Tensor, Mask]:
    """Nodata (NaN, from GeoTIFF) shown to the model as the band mean (0 once normalised), and
    every patch that touches it given loss weight 0 (no host sync: all on the device)."""
    touched = patchify(torch.isnan(x).any(dim=1, keepdim=True).float(), patch).amax(dim=-1)
    weight = 1.0 - touched
    if mask.loss_weight is not None:
        weight = weight * mask.loss_weight
    return torch.nan_to_num(x, nan=0.0), replace(mask, loss_weight=weight)


# (model, uint8 images) -> a PIL image, or None when the method has nothing to draw
Picture = Callable[[MaskedMethod, torch.Tensor], Any]


def _picture_then_train(picture: Picture, model: MaskedMethod, images: torch.Tensor) -> Any:
    try:
        return picture(model, images)
    finally:
        model.train()  # pictures are drawn in eval mode


def pretrain(
    cfg: RunConfig,
    resume: bool = True,
    picture: Picture | None = None,
    init: InitialWeights | None = None,
) -> PretrainResult:
    """Train `cfg` from scratch, or resume from `out_dir/checkpoint` when one exists.

    `init` holds the weights a new run starts from when `cfg.model.init_from` is set (read by
    `mimkit.interop.init_from.resolve_init_from`, which also gives `cfg` the source's
    architecture); a resumed run continues its own checkpoint instead.

    Launched by `torchrun` with several processes, each trains its share of every global batch
    (DDP, or FSDP with `train.parallel=fsdp`); the process group is closed on return.
    `picture`, when given, draws a few training images after each saved epoch (the command line
    passes the reconstruction figure); it lands in `RUN/reconstructions/` and the trackers.
    """
    ctx, device_name = init_distributed(cfg.train.device)
    try:
        # one writer per out_dir; SIGINT/SIGTERM save a checkpoint, then stop cleanly
        with run_lock(cfg.out_dir, ctx.is_main), stop_signals():
            return _pretrain(cfg, resume, ctx, device_name, picture, init)
    finally:
        shutdown_distributed()


def _pretrain(
    cfg: RunConfig,
    resume: bool,
    ctx: DistContext,
    device_name: str,
    picture: Picture | None,
    init: InitialWeights | None,
) -> PretrainResult:
    if cfg.model.init_from is not None and init is None:
        raise ConfigError(
            f"model.init_from {cfg.model.init_from}: its weights were not read; start the run "
            "with `mimkit pretrain` or mimkit.pretrain, which read them"
        )
    cfg = resolve_run_config(cfg)
    check_pretraining(cfg)
    tc = cfg.train
    check_trackers(tc.loggers)  # before the data loads
    device = pick_device(device_name)
    tune_backends(device)
    torch.manual_seed(tc.seed)
    model = method_from_config(cfg).to(device)
    cfg.method = model.settings  # what the method read from its teacher (its width) is saved too
    if tc.activation_checkpointing:
        checkpoint_blocks(model)
    source = TrainSource(cfg.data, cfg.model.in_chans, cfg.model.image_hw, tc.seed)
    checkpointer = Checkpointer(checkpoint_dir(cfg), cfg, ctx, resume)
    if checkpointer.found:
        _check_resumable(load_config_file(checkpointer.folder), cfg, checkpointer.folder)
        checkpointer.load_weights(model)
    elif init is not None:
        start_from(model, init, cfg.method.name, cfg.out_dir, ctx.is_main)
    groups = functools.partial(param_groups, weight_decay=tc.weight_decay)
    run, state = assemble(cfg, ctx, device, model, model, groups, source, checkpointer, "pretrain")
    nodata = cfg.model.patch_shape if cfg.data.source in NODATA_SOURCES else None
    loss = MaskedLoss(
        model, run.forward, run.generator, run.schedule.global_batch, device, run.amp_dtype, nodata
    )
    samples = source.sample(cfg.eval.reconstruction_images)
    if nodata is not None:  # pictures show nodata as the band mean
        samples = fill_nodata(samples, cfg.data.mean)
    # JPEGs decoded on the GPU from here on when data.decode asks (after the CPU-decoded samples)
    decode_on(source, cfg.data.decode, cfg.model.in_chans, cfg.model.image_hw, device)
    # rank 0 alone runs the model for it: not with FSDP, whose forward needs every rank
    if picture is not None and len(samples) and not (ctx.enabled and tc.parallel == "fsdp"):
        run.picture = functools.partial(_picture_then_train, picture, model, samples)
    last_loss = train_loop(run, state, loss)
    return PretrainResult(
        model,
        cfg,
        checkpointer.folder,
        state.step,
        last_loss,
        state.nonfinite,
        state.corrupt,
        samples,
    )
