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
        self._grad_norm_sum = torch.zeros((), device=device)  # of applied steps, for the logs

    def step(self, loss: torch.Tensor) -> bool | None:
        if self.sync_free:
            return self._step_on_device(loss)
        return self._step_checked(loss)

    def _step_checked(self, loss: torch.Tensor) -> bool:
        value = loss.item()
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            return False  # the loop counts it at once: checked mode knows now
        self.scaler.unscale_(self.optimizer)  # (a no-op without fp16) the norm is of true grads
        norm = self._grad_norm()  # fp16: inf when the scaler is about to skip the step
        self._grad_norm_sum += torch.where(torch.isfinite(norm), norm.float(), 0.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss_sum += value
        self._applied += 1
        return True

    def _step_on_device(self, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).float()
        norm = self._grad_norm()
        self._grad_norm_sum += torch.where(bad > 0, 0.0, norm.float())
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

    def _grad_norm(self) -> torch.Tensor:
        """The total L2 norm of the gradients, clipped to `clip_grad` when set; the norm before
        clipping is returned, on the device (no sync). Under FSDP the gradients are sharded
        (DTensors) and so is their norm: it is gathered to a plain tensor."""
        norm = self._sharded_grad_norm()
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _sharded_grad_norm(self) -> torch.Tensor:
        if self.clip_grad is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return self._applied.new_zeros(())
        if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: one foreach kernel
            return torch.nn.utils.get_total_norm(grads)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def read_grad_norm(self) -> float:
        """Mean gradient norm of the steps applied since the last call (0 when none); syncs.

        Call before `read_back`, which resets the applied count it divides by."""
        applied = self._applied.item()
        mean = self._grad_norm_sum.item() / applied if applied else 0.0
        self._grad_norm_sum.zero_()
        return mean

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
