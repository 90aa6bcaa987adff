"""Checkpoints: a folder of safetensors + YAML + JSON, written atomically, never pickled.

    model.safetensors      full model state (encoder.* and decoder.*)
    config.yaml            the resolved run config: everything needed to rebuild the model
    optimizer.safetensors  optimiser tensors            } only in training checkpoints,
    rng.safetensors        generator and RNG states     } needed to resume exactly
    trainer_state.json     step, epoch, counters, optimiser hyper-parameters

The folder is written under a temporary name and renamed into place, so a crash mid-write
leaves the previous checkpoint intact. docs/checkpoints.md gives the whole protocol: what is on
disk at every instant, what resume picks, and what is cleaned up.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import signal
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
from mimkit.yamlio import load_yaml

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"
OLD_PREFIX, TMP_PREFIX, TRASH_PREFIX = ".{}.old", ".{}.tmp-", ".{}.trash-"
LAST_GOOD = "last_good"  # the run's last checkpoint saved with no non-finite step before it

log = logging.getLogger(__name__)


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (a full disk, a read-only folder): one line for the
    user, and still an OSError for code that handles those."""


def _test_kill_point(phase: str) -> None:
    """Test hook: `MIMKIT_TEST_KILL_AT=phase[@n]` SIGKILLs this process at the n-th `phase`.

    The kill tests use it to die at an exact point of the write protocol (see
    tests/test_kill_resume.py); unset, it costs one dictionary lookup per save phase.
    """
    wanted = os.environ.get("MIMKIT_TEST_KILL_AT")
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != phase:
        return
    _KILL_COUNTS[phase] = _KILL_COUNTS.get(phase, 0) + 1
    if _KILL_COUNTS[phase] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_KILL_COUNTS: dict[str, int] = {}


def _discard(folder: Path) -> None:
    """Remove a folder so that no half-deleted copy is ever left under a name resume reads:
    it is renamed to a trash name first, then deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(TRASH_PREFIX.format(folder.name.lstrip(".")) + secrets.token_hex(4))
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _umask() -> int:
    """The process umask (read by setting it, and setting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse directory fsync
        pass
    finally:
        os.close(fd)


def recover_checkpoint(folder: str | Path) -> list[str]:
    """Finish or undo an interrupted save of `folder`; return what was done, one note each.

    Called by the run's only writer (it holds the run lock) before it reads the checkpoint:
    - `folder` missing but `.folder.old` there: the save was killed between its two renames;
      `.folder.old` is complete (renamed, never written in place) and becomes `folder` again.
    - `.folder.old` beside `folder`: the save was killed after its second rename; dropped.
    - `.folder.tmp-*` and `.folder.trash-*`: half-written or half-deleted copies; removed.
    """
    folder = Path(folder)
    parent, name = folder.parent, folder.name
    if not parent.is_dir():
        return []
    notes = []
    old = parent / OLD_PREFIX.format(name)
    if old.is_dir() and not folder.exists():
        old.rename(folder)
        notes.append(f"recovered {folder} from {old.name} (a save was interrupted between renames)")
    elif old.is_dir():
        _discard(old)
        notes.append(f"removed {old.name} left by an interrupted save")
    prefixes = tuple(f.format(n) for f in (TMP_PREFIX, TRASH_PREFIX) for n in (name, LAST_GOOD))
    stale = [p for p in parent.iterdir() if p.name.startswith(prefixes)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if stale:
        notes.append(f"removed {len(stale)} unfinished temporary folder(s) beside {folder}")
    return notes


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint folder, a run folder holding `checkpoint/`, or a model.safetensors path.

    A run folder whose save was interrupted between its two renames holds its newest complete
    checkpoint as `.checkpoint.old/`; that one is read (and said so) until the run resumes.
    """
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if (path / "checkpoint" / MODEL_FILE).is_file():
        path = path / "checkpoint"
    elif (path / OLD_PREFIX.format("checkpoint") / MODEL_FILE).is_file():
        path = path / OLD_PREFIX.format("checkpoint")
        log.warning("%s: reading the checkpoint an interrupted save left here", path)
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
    """Write the checkpoint folder atomically (temp folder, then rename); see docs/checkpoints.md.

    Files get the user's umask. A full disk (or any OS error) is one `CheckpointError` naming
    the folder, with the previous checkpoint left as it was.
    """
    folder = Path(folder)
    try:
        return _save_checkpoint(folder, model, cfg, optimizer, trainer_state, rng)
    except OSError as exc:
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else exc.strerror
        raise CheckpointWriteError(
            f"{folder}: cannot write the checkpoint ({reason or exc}); the previous one is kept"
        ) from None
    except SafetensorError as exc:  # safetensors reports a full disk as its own error
        raise CheckpointWriteError(
            f"{folder}: cannot write the checkpoint ({exc}); the previous one is kept"
        ) from None


def _save_checkpoint(
    folder: Path,
    model: nn.Module,
    cfg: RunConfig,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any] | None,
    rng: dict[str, torch.Tensor] | None,
) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (not mkdtemp, which makes 0700 folders): the user's umask decides
    tmp = folder.with_name(TMP_PREFIX.format(folder.name) + secrets.token_hex(4))
    tmp.mkdir()
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
        mode = 0o666 & ~_umask()  # safetensors writes owner-only files; the umask decides
        for child in tmp.iterdir():
            child.chmod(mode)
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        _test_kill_point("written")
        old = folder.with_name(OLD_PREFIX.format(folder.name))
        if old.exists() and folder.exists():
            _discard(old)  # left by an earlier interrupted save; `folder` is newer
        if folder.exists():
            folder.rename(old)
        _test_kill_point("between_renames")
        tmp.rename(folder)
        _fsync_dir(folder.parent)
        _test_kill_point("renamed")
        _discard(old)
    except BaseException:  # an error or Ctrl-C: leave the newest complete checkpoint in place
        shutil.rmtree(tmp, ignore_errors=True)
        old = folder.with_name(OLD_PREFIX.format(folder.name))
        if old.is_dir() and not folder.exists():
            old.rename(folder)
        raise
    return folder


def load_config_file(folder: Path) -> RunConfig:
    try:
        tree = load_yaml((folder / CONFIG_FILE).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{folder / CONFIG_FILE}: not valid YAML ({first})") from None
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
    where = folder / STATE_FILE
    try:
        state = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where}: damaged, not a JSON object ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        raise CheckpointError(f"{where}: damaged, expected a JSON object with an 'optimizer' entry")
    _check_counters(state, where)
    tensors = read_weights(folder / OPTIMIZER_FILE)
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"{folder / OPTIMIZER_FILE}: damaged or from another model, the optimiser state does "
            f"not fit ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    rng = read_weights(folder / RNG_FILE) if (folder / RNG_FILE).is_file() else {}
    _check_rng(rng, folder / RNG_FILE)
    return state, rng


def _check_counters(state: dict[str, Any], where: Path) -> None:
    for key in ("epoch", "micro_step", "step", "nonfinite", "corrupt", "images"):
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(
                f"{where}: damaged, {key!r} should be a count >= 0, got {value!r}"
            )


def _check_rng(rng: dict[str, torch.Tensor], where: Path) -> None:
    for key, value in rng.items():
        if value.dtype != torch.uint8 or value.ndim != 1:
            raise CheckpointError(
                f"{where}: damaged, RNG state {key!r} should be a 1-D uint8 tensor, "
                f"got {value.dtype} {tuple(value.shape)}"
            )


def check_weights(weights: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights no model should run with: non-float parameters, NaN or inf values."""
    for key, value in weights.items():
        if not value.is_floating_point():
            if key.endswith("num_batches_tracked"):
                continue
            raise CheckpointError(
                f"{where}: {key} holds {value.dtype} values; weights must be floating point"
            )
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{where}: {key} holds NaN or inf values")


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
    try:
        if "generator" in state:
            generator.set_state(state["generator"])
        if "torch_cpu" in state:
            torch.set_rng_state(state["torch_cpu"])
        if "torch_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["torch_cuda"])
    except RuntimeError as exc:
        raise CheckpointError(f"{RNG_FILE}: damaged RNG state ({str(exc)[:120]})") from None


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
        if self.ctx.is_main:  # the run lock makes this process the folder's only writer
            for note in recover_checkpoint(folder):
                log.warning("%s", note)
        barrier(self.ctx)
        self.found = resume and (folder / MODEL_FILE).is_file()
        if self.ctx.is_main and not self.found:  # a fresh start: an older run's copy is not ours
            _discard(self.last_good_folder)
        self._parts: tuple | None = None
        self._nonfinite_at_save = 0  # non-finite steps counted when the latest save was made
        self._latest_clean = False  # whether the latest save had none since the one before

    @property
    def last_good_folder(self) -> Path:
        return self.folder.with_name(LAST_GOOD)

    def last_good(self) -> Path | None:
        """The newest checkpoint saved with no non-finite step since the save before it."""
        if self.last_good_folder.is_dir():
            return self.last_good_folder
        if self._latest_clean and (self.folder / MODEL_FILE).is_file():
            return self.folder
        return None

    def load_weights(self, model: nn.Module) -> None:
        weights = read_weights(self.folder / MODEL_FILE)
        check_weights(weights, str(self.folder / MODEL_FILE))
        load_state_into(model, weights, str(self.folder / MODEL_FILE))

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
            try:
                scaler.load_state_dict(saved["scaler"])
            except (KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{self.folder / STATE_FILE}: damaged scaler ({exc})"
                ) from None
        restore_rng(generator, rng)
        state = TrainerState.from_saved(saved)
        self._nonfinite_at_save, self._latest_clean = state.nonfinite, saved.get("clean", True)
        return state

    def save(self, state: TrainerState) -> None:
        """Every rank takes part (FSDP gathers shards); rank 0 writes the folder."""
        if self._parts is None:
            raise RuntimeError("Checkpointer.save before resume_or_start")
        model, optimizer, scaler, generator = self._parts
        trainer_state = state.to_dict()
        if scaler.is_enabled():
            trainer_state["scaler"] = scaler.state_dict()
        model_state, optim_state = model.state_dict(), optimizer.state_dict()
        clean = state.nonfinite == self._nonfinite_at_save and all(
            bool(torch.isfinite(v).all()) for v in model_state.values() if v.is_floating_point()
        )
        trainer_state["clean"] = clean
        if self.ctx.is_main:
            if not clean:
                self._keep_last_good()
            save_checkpoint(
                self.folder,
                _Fixed(model_state),
                self.cfg,
                _Fixed(optim_state),
                trainer_state,
                rng_state(generator),
            )
            if clean:  # the latest is good again: the copy kept apart is older
                _discard(self.last_good_folder)
        self._nonfinite_at_save, self._latest_clean = state.nonfinite, clean
        barrier(self.ctx)

    def _keep_last_good(self) -> None:
        """Before a save after non-finite steps replaces a good checkpoint, keep it apart.

        Hard links, not copies: checkpoint files are never written in place, so the linked
        files stay as they are when `checkpoint/` is replaced.
        """
        if not self._latest_clean or self.last_good_folder.exists():
            return
        if not (self.folder / MODEL_FILE).is_file():
            return
        tmp = self.folder.with_name(TMP_PREFIX.format(LAST_GOOD) + secrets.token_hex(4))
        try:
            shutil.copytree(self.folder, tmp, copy_function=os.link)
        except OSError:  # no hard links on this file system: copy
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.folder, tmp)
        tmp.rename(self.last_good_folder)
        log.warning(
            "non-finite steps since the last save: the last good checkpoint is kept in %s",
            self.last_good_folder,
        )


def load_teacher(path: str) -> nn.Module:
    """A teacher checkpoint as a frozen model (eval mode, CPU)."""
    return load_model(path)[0]


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig]:
    """(method, RunConfig) from a checkpoint folder, with keys and shapes checked."""
    folder = resolve_checkpoint_dir(path)
    cfg = load_config_file(folder)
    model = method_from_config(cfg)
    weights = read_weights(folder / MODEL_FILE)
    check_weights(weights, str(folder / MODEL_FILE))
    # 0.1 saved MaskAlign's frozen teacher inside the student; teachers are no longer saved
    weights = {k: v for k, v in weights.items() if not k.startswith("teacher.")}
    load_state_into(model, weights, str(folder / MODEL_FILE))
    cfg.method = model.settings  # what the method read from its teacher (its width) is kept
    return model.to(device).eval(), cfg
