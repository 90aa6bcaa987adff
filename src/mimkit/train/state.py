"""Where a training run is (`TrainerState`) and how long it runs (`Schedule`).

Both are kept in global units (optimiser steps, epochs, micro-batches of the global batch), so a
run saved by N processes resumes on M.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from mimkit.config import TrainConfig
from mimkit.errors import ConfigError
from mimkit.train.optim import lr_at, scaled_lr

if TYPE_CHECKING:  # annotations only: the state needs no data code
    from mimkit.data.sources import TrainSource

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """The counters a checkpoint carries (`trainer_state.json`)."""

    epoch: int = 0
    micro_step: int = 0  # micro-batches done in this epoch
    step: int = 0  # optimiser steps taken
    nonfinite: int = 0  # steps skipped for a non-finite loss
    corrupt: int = 0  # training images that failed to decode
    images: int = 0  # images trained on, over all processes
    global_batch: int | None = None  # samples per micro-batch over all processes

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainerState:
        """From a checkpoint's trainer state; keys it does not know (optimizer, scaler) are left."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def carry_over(self, global_batch: int, micro_per_epoch: int, accum: int) -> None:
        """Move the saved position to this run's global batch (it changes with world size).

        Same global batch: exact continuation. Another one: the same epoch, resumed at the first
        whole optimiser step past the images already seen in it; the step count follows.
        """
        old = self.global_batch if self.global_batch is not None else global_batch
        self.global_batch = global_batch
        if old == global_batch:
            return
        micro = min(micro_per_epoch, -(-self.micro_step * old // global_batch))
        micro = -(-micro // accum) * accum
        if micro >= micro_per_epoch:
            self.epoch, micro = self.epoch + 1, 0
        self.micro_step = micro
        self.step = self.epoch * (micro_per_epoch // accum) + micro // accum
        log.warning(
            "resuming with global batch %d (checkpoint used %d): continuing at epoch %d, "
            "step %d; the schedule is recomputed for the new batch",
            global_batch,
            old,
            self.epoch,
            self.step,
        )


@dataclass(frozen=True)
class Schedule:
    """Run length and learning rate, fixed by the train config, the data and the global batch."""

    global_batch: int  # samples per micro-batch over all processes
    accum_steps: int  # micro-batches per optimiser step
    micro_per_epoch: int  # micro-batches used per epoch: a whole number of optimiser steps
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    stop_at: int  # total_steps, or train.max_steps when that comes first

    @classmethod
    def plan(cls, tc: TrainConfig, source: TrainSource, world_size: int) -> Schedule:
        if tc.accum_steps < 1 or tc.batch_size < 1 or tc.epochs < 1:
            raise ConfigError("train.batch_size, train.accum_steps and train.epochs must be >= 1")
        global_batch = tc.batch_size * world_size
        micro_per_epoch = source.steps_per_epoch(global_batch) // tc.accum_steps * tc.accum_steps
        if micro_per_epoch == 0:
            raise ConfigError(
                f"train.accum_steps={tc.accum_steps} micro-batches do not fit in one epoch of "
                f"{source.num_items} items at a global batch of {global_batch} "
                f"(train.batch_size={tc.batch_size} x {world_size} processes)"
            )
        steps_per_epoch = micro_per_epoch // tc.accum_steps
        total = steps_per_epoch * tc.epochs
        effective = global_batch * tc.accum_steps
        return cls(
            global_batch=global_batch,
            accum_steps=tc.accum_steps,
            micro_per_epoch=micro_per_epoch,
            total_steps=total,
            warmup_steps=round(tc.warmup_epochs * steps_per_epoch),
            peak_lr=tc.lr if tc.lr is not None else scaled_lr(tc.base_lr, effective),
            min_lr=tc.min_lr,
            stop_at=min(total, tc.max_steps) if tc.max_steps is not None else total,
        )

    @property
    def steps_per_epoch(self) -> int:
        return self.micro_per_epoch // self.accum_steps

    @property
    def effective_batch(self) -> int:
        """Samples per optimiser step."""
        return self.global_batch * self.accum_steps

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)
