"""mimkit: masked image modelling for Vision Transformers.

The public API (`mimkit.api`, loaded on first use so that `import mimkit` and `mimkit --help`
stay free of torch):

    model = mimkit.load("runs/x")                  # Model: .encode(images), .method, .cfg
    feats = mimkit.encode(images, "runs/x")        # (N, D) float32
    cfg = mimkit.load_config("configs/fmnist_mae_tiny.yaml", ["train.epochs=1"])
    model = mimkit.pretrain(cfg)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Model", "RunConfig", "__version__", "encode", "load", "load_config", "pretrain"]
_API = {"Model", "RunConfig", "encode", "load", "load_config", "pretrain"}


def __getattr__(name: str) -> Any:
    if name in _API:
        # loaded on first use (PEP 562), for a fast start: the API imports torch
        from mimkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'mimkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
