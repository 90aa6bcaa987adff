"""One optimiser step that refuses non-finite losses, with or without a host sync.

Two ways to skip a bad step, chosen by what the optimiser can do:

* **sync-free** (fused AdamW, no fp16 scaler: the default on GPU). The non-finite flag stays
  on the device and is handed to the fused kernel as `found_inf`, the hook `GradScaler` uses;
  the kernel then leaves parameters, moments and the step count untouched. Nothing is read
  back per step: the loop reads the running counts only when it logs or saves, so the step keeps
  its number (the schedule moves on) and the `max_nonfinite` halt happens at that read-back.
* **checked** (any other optimiser, fp16 with `GradScaler`, and the CPU default). The loss is
  read back each step (`.item()`), a bad step is skipped before the optimiser runs and does
  not count as a step: the behaviour the CPU tests pin bit for bit.
"""

from __future__ import annotations

import math

import torch


def supports_sync_free(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Fused Adam/AdamW accept a device-side `found_inf`; GradScaler owns it under fp16."""
    fused = bool(optimizer.defaults.get("fused"))
    return fused and not scaler.is_enabled()


class GuardedStep:
    """Runs clip + optimiser step for one accumulated loss and keeps the running counts.

    `step(loss)` returns True when the step was applied, False when it was skipped (checked
    mode), or None in sync-free mode where the answer stays on the device.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        params: list[torch.nn.Parameter],
        clip_grad: float | None,
        device: torch.device,
        sync_free: bool | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.scaler = scaler
        self.params = params
        self.clip_grad = clip_grad
        self.sync_free = supports_sync_free(optimizer, scaler) if sync_free is None else sync_free
        if self.sync_free and not supports_sync_free(optimizer, scaler):
            raise ValueError("sync-free steps need a fused Adam/AdamW and no fp16 GradScaler")
        # device-side running sums since the last read-back (sync-free mode)
        self._skipped = torch.zeros((), device=device)
        self._loss_sum = torch.zeros((), device=device)
        self._applied = torch.zeros((), device=device)

    def step(self, loss: torch.Tensor) -> bool | None:
        if self.sync_free:
            return self._step_on_device(loss)
        return self._step_checked(loss)

    def _step_checked(self, loss: torch.Tensor) -> bool:
        value = loss.item()
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            return False  # the loop counts it at once: checked mode knows now
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss_sum += value
        self._applied += 1
        return True

    def _step_on_device(self, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).float()
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.optimizer.found_inf = bad  # read by the fused kernel: 1 -> leave everything as is
        self.optimizer.grad_scale = None
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf, self.optimizer.grad_scale
        self.optimizer.zero_grad(set_to_none=True)
        self._skipped += bad
        self._loss_sum += torch.where(bad > 0, torch.zeros_like(loss), loss.detach().float())
        self._applied += 1 - bad
        return None

    def read_back(self) -> tuple[int, float, int]:
        """(skipped, summed loss of applied steps, applied steps) since the last call; syncs.

        `skipped` counts only sync-free skips; checked mode reports each skip as it happens.
        """
        skipped, loss_sum, applied = (
            int(self._skipped.item()),
            float(self._loss_sum.item()),
            int(self._applied.item()),
        )
        self._skipped.zero_()
        self._loss_sum.zero_()
        self._applied.zero_()
        return skipped, loss_sum, applied
