"""The weights a new run starts from (`model.init_from`), as the loop receives them.

Reading a foreign checkpoint (HF, timm, official MAE, another mimkit run) is interop's work, one
layer up (`mimkit.interop.init_from`); it hands the loop an `InitialWeights`: a state dict in
mimkit's names, already at the run's patch grid, and the record of where it came from. The loop
loads it into the freshly built method before step 0, with a fresh optimiser and schedule, and
writes the record as `RUN/source.json`. A resumed run never uses it: resuming continues the
run's own checkpoint, and an out_dir whose checkpoint was not started from the same source is
refused (`check_fresh_start`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.train.checkpoint import load_state_into

log = logging.getLogger(__name__)
SOURCE_FILE = "source.json"  # beside the run's checkpoint/, as `mimkit import` writes it


@dataclass
class InitialWeights:
    """A source's weights for a new run: `encoder.*` (and, when it has one, its head/decoder)."""

    state: dict[str, torch.Tensor]  # mimkit names, position tables at the run's patch grid
    source: str  # the model.init_from path
    record: dict[str, Any] = field(default_factory=dict)  # written as RUN/source.json

    def load_into(self, model: nn.Module, method_name: str) -> None:
        """Every encoder weight (all must fit); the rest when it fits the method's head exactly
        (MAE's decoder from an MAE source), else the head keeps its fresh init, recorded."""
        where = f"model.init_from {self.source}"
        encoder = {k[len("encoder.") :]: v for k, v in self.state.items() if k.startswith("encoder.")}
        if not encoder:
            raise ConfigError(f"{where}: holds no encoder weights")
        load_state_into(model.encoder, encoder, where)
        head = {k: v for k, v in self.state.items() if not k.startswith("encoder.")}
        if not head:
            return  # the record already says the decoder is freshly initialised
        ours = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        fits = set(ours) == set(head) and all(ours[k].shape == head[k].shape for k in head)
        if fits:
            load_state_into(model, self.state, where)
            return
        self.record["decoder"] = (
            f"not loaded: method {method_name!r} has another head than the source's "
            f"({len(head)} tensors); freshly initialised"
        )
        log.warning("%s: %s", where, self.record["decoder"])


def check_fresh_start(saved_init_from: str | None, init_from: str | None, folder: Path) -> None:
    """Refuse the ambiguous case: model.init_from set while out_dir already holds a checkpoint
    that was not started from that same source (resume it, or start over: not both)."""
    if init_from is None or saved_init_from == init_from:
        return
    raise ConfigError(
        f"model.init_from {init_from}: {folder} already holds a checkpoint of another run; "
        "resume it without model.init_from, or start from the new weights in another out_dir "
        "(or with --no-resume)"
    )


def start_from(
    model: nn.Module, init: InitialWeights, method_name: str, out_dir: str, is_main: bool
) -> None:
    """Load `init` into a freshly built method and write its record as RUN/source.json."""
    init.load_into(model, method_name)
    log.info(
        "started from %s (%s): encoder%s loaded; fresh optimiser and schedule",
        init.source,
        init.record.get("format", "?"),
        " and decoder" if init.record.get("decoder") == "imported" else "",
    )
    if is_main:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / SOURCE_FILE).write_text(json.dumps(init.record, indent=1))
