"""Process groups for multi-process training through `torchrun` (gloo on CPU, NCCL on GPU).

The loop stays world-size agnostic by one rule: everything random that touches a sample (data
order, crop/flip parameters, masks) is drawn for the whole *global* batch from a generator every
rank seeds alike, and each rank keeps its slice of rows. So splitting a global batch across
ranks changes who computes a sample, never what the sample sees, and N processes follow the same
loss trajectory as one process with the same global batch (to float-reduction tolerance).
Trainer state is kept in global units (optimiser step, epoch, global micro-batches), which is
what lets a run resume on another world size.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mimkit.errors import ConfigError

log = logging.getLogger(__name__)
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its local device index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def rows(self, per_rank: int) -> slice:
        """This rank's rows of a global batch of `per_rank * world_size` samples."""
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def env_context() -> DistContext:
    """Rank and world size as `torchrun` sets them (RANK, WORLD_SIZE, LOCAL_RANK); else 1 process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK: expected integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return DistContext(rank, world, local)


def init_distributed(device_name: str = "auto") -> tuple[DistContext, str]:
    """Join the process group torchrun describes; returns (context, device name for this rank).

    One process: nothing is initialised and `device_name` is returned unchanged. Several: NCCL
    when CUDA is used (each rank on `cuda:LOCAL_RANK`), gloo on CPU.
    """
    ctx = env_context()
    if not ctx.enabled:
        return ctx, device_name
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
        device_name = f"cuda:{ctx.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        _created_here.append(True)
    return ctx, device_name


_created_here: list[bool] = []  # a group the caller set up themselves is theirs to close


# How long a closing rank leaves the GIL free for gloo's worker threads (see below)
GLOO_DRAIN_S = 0.5


def shutdown_distributed() -> None:
    """Close the process group if `init_distributed` opened it.

    Then sleep briefly. A gloo worker thread frees a finished barrier just after the caller's
    wait returns, and with it the work the barrier waited on; freeing that work's tensors takes
    the GIL. A rank that exits at once can reach interpreter finalization first, and the thread
    then aborts the process (SIGABRT, "terminate called without an active exception"; 3 of 174
    two-rank FSDP runs here, core dump in gloo's runLoop; 0 of 300 with the sleep). The sleep
    releases the GIL while the interpreter is whole, so the thread finishes first.
    """
    if _created_here and dist.is_initialized():
        gloo = dist.get_backend() == "gloo"
        dist.destroy_process_group()
        if gloo:
            time.sleep(GLOO_DRAIN_S)
    _created_here.clear()


def wrap_model(model: nn.Module, ctx: DistContext, mode: str, device: torch.device) -> nn.Module:
    """The module the loop calls forward on: DDP or FSDP (fully_shard per block) when distributed.

    The unwrapped `model` keeps its parameter names; with DDP its parameters are the trained
    ones on every rank, so rank 0 can checkpoint it directly.
    """
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"train.parallel must be one of {list(PARALLEL_MODES)}; got {mode!r}")
    if not ctx.enabled:
        return model
    if mode == "fsdp":
        # optional: FSDP2 needs a recent torch (>= 2.4); only FSDP runs import it
        from torch.distributed.fsdp import fully_shard

        # MAE returns `pred` as a slice (a view); FSDP warns in case the caller edits it in
        # place, which would skip its pre-backward hook. The loop only reads the loss.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")

        for block in _transformer_blocks(model):
            fully_shard(block)
        return fully_shard(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block of every `blocks` stack (encoder, decoder, a classifier's encoder)."""
    stacks = (getattr(m, "blocks", None) for m in model.modules())
    return [block for stack in stacks if isinstance(stack, nn.ModuleList) for block in stack]


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a tensor over ranks (SUM then divide: gloo has no AVG). No host sync on GPU."""
    if not ctx.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class _StateView:
    """Something with `state_dict()`/`load_state_dict()` for the checkpoint writer and reader."""

    def __init__(self, get, put=None) -> None:
        self._get, self._put = get, put

    def state_dict(self) -> dict:
        return self._get()

    def load_state_dict(self, state: dict) -> None:
        self._put(state)


def _fqn_order(osd: dict) -> list[str]:
    return [name for group in osd["param_groups"] for name in group["params"]]


def _fsdp_options(**kwargs):
    # optional: distributed checkpoint state dicts need torch >= 2.2; only FSDP runs use them
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def checkpoint_views(
    model: nn.Module,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    mode: str,
) -> tuple[nn.Module | _StateView, torch.optim.Optimizer | _StateView]:
    """(model, optimizer) as the checkpoint code sees them: whole, unsharded, index-keyed.

    Without FSDP they are the objects themselves. With FSDP, `state_dict()` gathers the full
    tensors to rank 0's CPU (a collective: every rank must call it) and re-keys the optimiser
    state by parameter index, the layout of `torch.optim` and of our checkpoints; loading goes
    the other way and scatters the shards from every rank's copy of the full state.
    """
    if not (ctx.enabled and mode == "fsdp"):
        return model, optimizer
    # optional: distributed checkpoint state dicts need torch >= 2.2; only FSDP runs use them
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    # `model` may sit inside the trained module (a classifier inside its loss): keep its keys
    prefix = next(f"{name}." for name, m in train_model.named_modules() if m is model)
    prefix = "" if prefix == "." else prefix

    def model_state() -> dict:
        full = get_model_state_dict(train_model, options=_fsdp_options(cpu_offload=True))
        return {k.removeprefix(prefix): v for k, v in full.items() if k.startswith(prefix)}

    def optim_state() -> dict:
        osd = get_optimizer_state_dict(
            train_model, optimizer, options=_fsdp_options(cpu_offload=True)
        )
        if not osd:  # ranks other than 0 get nothing back with cpu_offload
            return {"state": {}, "param_groups": []}
        index = {name: i for i, name in enumerate(_fqn_order(osd))}
        return {
            "state": {index[name]: value for name, value in osd["state"].items()},
            "param_groups": [
                dict(g, params=[index[n] for n in g["params"]]) for g in osd["param_groups"]
            ],
        }

    def load_optim(state: dict) -> None:
        names = _fqn_order(
            get_optimizer_state_dict(train_model, optimizer, options=_fsdp_options())
        )
        by_name = {
            "state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [
                dict(g, params=[names[int(i)] for i in g["params"]]) for g in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(
            train_model, optimizer, optim_state_dict=by_name, options=_fsdp_options()
        )

    return _StateView(model_state), _StateView(optim_state, load_optim)
