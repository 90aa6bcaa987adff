"""Checkpoints: a folder of safetensors + YAML + JSON, written atomically, never pickled.

    model.safetensors      full model state (encoder.* and decoder.*)
    config.yaml            the resolved run config: everything needed to rebuild the model
    optimizer.safetensors  optimiser tensors            } only in training checkpoints,
    rng.safetensors        generator and RNG states     } needed to resume exactly
    trainer_state.json     step, epoch, counters, optimiser hyper-parameters

The folder is written under a temporary name and renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mimkit.config import RunConfig, config_from_dict, config_to_dict
from mimkit.errors import CheckpointError, ConfigError
from mimkit.objectives import build_method
from mimkit.train.distributed import DistContext, barrier
from mimkit.train.state import TrainerState

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint folder, a run folder holding `checkpoint/`, or a model.safetensors path."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if (path / "checkpoint" / MODEL_FILE).is_file():
        path = path / "checkpoint"
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{path}: not a mimkit checkpoint (no {MODEL_FILE})")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: not a mimkit checkpoint (no {CONFIG_FILE})")
    return path


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    cfg: RunConfig,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the checkpoint folder atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / MODEL_FILE, metadata={"format": "mimkit"})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, tmp / OPTIMIZER_FILE)
            state = dict(trainer_state or {}, optimizer=meta)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if rng:
            save_file({k: v.contiguous().cpu() for k, v in rng.items()}, tmp / RNG_FILE)
        for child in tmp.iterdir():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_config_file(folder: Path) -> RunConfig:
    try:
        tree = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not valid YAML ({exc})") from exc
    try:
        return config_from_dict(tree or {}, str(folder / CONFIG_FILE))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc


def load_state_into(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load with every key and shape checked, naming the first differences on mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k} {tuple(weights[k].shape)} (model expects {tuple(expected[k].shape)})"
        for k in expected
        if k in weights and weights[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:3]}")
        if wrong:
            parts.append(f"wrong shapes: {wrong[:3]}")
        raise CheckpointError(f"{where}: weights do not fit this model: " + "; ".join(parts))
    model.load_state_dict(weights)


def load_training_state(
    folder: Path, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the optimiser in place; return (trainer_state, rng tensors)."""
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder}: holds weights only, no training state to resume from")
    state = json.loads((folder / STATE_FILE).read_text())
    tensors = read_weights(folder / OPTIMIZER_FILE)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    rng = read_weights(folder / RNG_FILE) if (folder / RNG_FILE).is_file() else {}
    return state, rng


def method_from_config(cfg: RunConfig) -> nn.Module:
    """The method a run config asks for; its teacher, if any, read from its checkpoint."""
    return build_method(cfg.model, cfg.masking, cfg.method, load_teacher=load_teacher)


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The draw generator's and torch's global RNG states, as a checkpoint stores them."""
    state = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(generator: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    """Undo `rng_state`; states a checkpoint lacks are left as they are."""
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


class Checkpointer:
    """A run's `checkpoint/` folder: what a training checkpoint holds, resumed and saved.

    The weights are loaded first (`load_weights`, before the model is wrapped for DDP/FSDP);
    `resume_or_start` then names the optimiser, scaler and generator it restores and saves. The
    model and optimiser are passed as their checkpoint views (see
    `mimkit.train.distributed.checkpoint_views`): every rank gathers, rank 0 writes.
    """

    def __init__(
        self, folder: Path, cfg: RunConfig, ctx: DistContext | None = None, resume: bool = True
    ) -> None:
        self.folder = folder
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.found = resume and (folder / MODEL_FILE).is_file()
        self._parts: tuple | None = None

    def load_weights(self, model: nn.Module) -> None:
        load_state_into(
            model, read_weights(self.folder / MODEL_FILE), str(self.folder / MODEL_FILE)
        )

    def resume_or_start(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        generator: torch.Generator,
    ) -> TrainerState:
        """The saved trainer state with optimiser, scaler and RNGs restored; or a fresh state."""
        self._parts = (model, optimizer, scaler, generator)
        if not self.found:
            return TrainerState()
        saved, rng = load_training_state(self.folder, optimizer)
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        restore_rng(generator, rng)
        return TrainerState.from_saved(saved)

    def save(self, state: TrainerState) -> None:
        """Every rank takes part (FSDP gathers shards); rank 0 writes the folder."""
        if self._parts is None:
            raise RuntimeError("Checkpointer.save before resume_or_start")
        model, optimizer, scaler, generator = self._parts
        trainer_state = state.to_dict()
        if scaler.is_enabled():
            trainer_state["scaler"] = scaler.state_dict()
        model_state, optim_state = model.state_dict(), optimizer.state_dict()
        if self.ctx.is_main:
            save_checkpoint(
                self.folder,
                _Fixed(model_state),
                self.cfg,
                _Fixed(optim_state),
                trainer_state,
                rng_state(generator),
            )
        barrier(self.ctx)


def load_teacher(path: str) -> nn.Module:
    """A teacher checkpoint as a frozen model (eval mode, CPU)."""
    return load_model(path)[0]


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig]:
    """(method, RunConfig) from a checkpoint folder, with keys and shapes checked."""
    folder = resolve_checkpoint_dir(path)
    cfg = load_config_file(folder)
    model = method_from_config(cfg)
    weights = read_weights(folder / MODEL_FILE)
    # 0.1 saved MaskAlign's frozen teacher inside the student; teachers are no longer saved
    weights = {k: v for k, v in weights.items() if not k.startswith("teacher.")}
    load_state_into(model, weights, str(folder / MODEL_FILE))
    cfg.method = model.settings  # what the method read from its teacher (its width) is kept
    return model.to(device).eval(), cfg
