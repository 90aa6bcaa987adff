"""Experiment trackers as optional sinks beside `metrics.jsonl`: TensorBoard, W&B, MLflow.

`train.loggers=[tensorboard, wandb, mlflow]` names them; each is an optional dependency (the
`tensorboard`, `wandb` and `mlflow` extras) and a missing one is refused before training starts.
Every sink is written from the run folder alone, with no network:

* tensorboard: event files under `RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`);
* wandb: an offline run under `RUN/wandb/` (`wandb sync RUN/wandb/offline-run-*` uploads it);
* mlflow: a local file store `RUN/mlruns/` (`mlflow ui --backend-store-uri RUN/mlruns`)
  unless `MLFLOW_TRACKING_URI` names another.

A sink receives what `MetricsWriter` writes: the `start` line's fields as parameters, each
`train` line's numbers as scalars at its step, and pictures (the reconstruction image after
each saved epoch) as images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mimkit.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# fields of a `train` metrics line that are curves (the rest, step and epoch, are positions)
SCALARS = ("loss", "lr", "img_per_s", "grad_norm", "nonfinite_skipped", "corrupt_skipped")


class Sink(Protocol):
    def params(self, params: dict[str, Any]) -> None: ...
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def image(self, step: int, name: str, image: np.ndarray) -> None: ...
    def close(self) -> None: ...


def check_trackers(names: list[str]) -> None:
    """Refuse an unknown tracker name with the field's name."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(
                f"train.loggers: unknown tracker {name!r}; expected some of {list(TRACKERS)}"
            )


def _missing(name: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        f"train.loggers: {name} needs its package ({exc.name or exc}); "
        f"pip install 'mimkit[{EXTRA[name]}]'"
    )


class TensorBoardSink:
    def __init__(self, run_dir: Path, run_name: str) -> None:
        try:
            # optional: mimkit[tensorboard]
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", exc) from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def params(self, params: dict[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in params.items())  # indented: markdown code
        self.writer.add_text("run", text, 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        self.writer.add_image(name, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, run_name: str) -> None:
        try:
            import wandb  # optional: mimkit[wandb]
        except ImportError as exc:
            raise _missing("wandb", exc) from exc
        self.wandb = wandb
        # offline unless the user asked for online in the environment: nothing leaves the machine
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(
            project="mimkit", name=run_name, dir=str(run_dir), mode=mode, reinit="create_new"
        )

    def params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        self.run.log({name: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowSink:
    def __init__(self, run_dir: Path, run_name: str) -> None:
        try:
            import mlflow  # optional: mimkit[mlflow]
        except ImportError as exc:
            raise _missing("mlflow", exc) from exc
        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # a plain folder in the run, readable without a server or a database; MLflow >= 3
            # asks for this opt-in before it writes its file store
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name("mimkit")
        experiment = found.experiment_id if found else self.client.create_experiment("mimkit")
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id

    def params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.client.log_param(self.run_id, key, value)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, key=name, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists and None as their text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str)) else str(value)
    return flat


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MLflowSink}


class Trackers:
    """The sinks of one run, fed with metrics lines and pictures."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    @classmethod
    def open(
        cls, names: list[str], run_dir: str | Path, config: dict[str, Any] | None = None
    ) -> Trackers:
        """The named sinks for `run_dir`, each given the run config as flat parameters."""
        check_trackers(names)
        run_dir = Path(run_dir)
        trackers = cls([SINKS[name](run_dir, run_dir.name) for name in dict.fromkeys(names)])
        if config and trackers.sinks:
            flat = flatten(config)
            for sink in trackers.sinks:
                sink.params(flat)
        return trackers

    def record(self, record: dict[str, Any]) -> None:
        """One metrics line: `start` -> parameters, `train` -> scalars at its step."""
        if not self.sinks:
            return
        event = record.get("event")
        if event == "start":
            params = {k: v for k, v in record.items() if k not in ("event", "time")}
            for sink in self.sinks:
                sink.params(params)
        elif event == "train":
            values = {k: float(record[k]) for k in SCALARS if record.get(k) is not None}
            for sink in self.sinks:
                sink.scalars(int(record["step"]), values)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        for sink in self.sinks:
            sink.image(step, name, image)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
