"""LARS (You et al., 2017): SGD with momentum whose step for each weight matrix is scaled by the
trust ratio ||w|| / ||g + wd * w||, as MAE's linear probe trains its head.

Parameters with one dimension (biases, norm scales) get neither weight decay nor the trust
ratio, as in MAE's util/lars.py; a zero norm on either side leaves the step unscaled.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    update = update.mul(self._trust_ratio(p, update, group["trust_coefficient"]))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss

    @staticmethod
    def _trust_ratio(p: torch.Tensor, update: torch.Tensor, coefficient: float) -> torch.Tensor:
        weight_norm, update_norm = torch.norm(p), torch.norm(update)
        ratio = coefficient * weight_norm / update_norm
        one = torch.ones_like(ratio)
        return torch.where((weight_norm > 0) & (update_norm > 0), ratio, one)
