"""kNN and linear probes of multi-input methods (docs/results/multiview.md, MultiMAE and CROMA).

For a run folder, features of the pretrained method and of its untrained twin (same config and
seed) on each named subset of inputs (`--subsets image image+depth+seg`; a single-input run
has one subset, its images), and the raw-pixel baseline of each subset (normalised inputs,
flattened and concatenated). Scored as `mimkit eval knn` and `mimkit eval linear` score:
weighted cosine kNN (k, T) and the linear probe (lr picked on 10% of train), one probe per
`--seeds`. `--data` and `--size` evaluate on another folder at another image size: CROMA's
size extrapolation, where a model with a sin-cos table gets the table of the new grid (what
mimkit does on load) and an ALiBi model needs nothing. `--recon --mosaic N` tests the same at
the trained resolution: each image is N x N test items side by side (a larger area, every item
at its own scale), so only the grid grows.

    python benchmarks/multiview_probes.py runs/x --subsets optical optical+radar --out x.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from mimkit.data.multi import Inputs
from mimkit.data.sources import load_labelled_splits
from mimkit.data.transforms import normalize
from mimkit.eval.features import InputsEncoder, extract_features, feature_stats
from mimkit.eval.knn import knn_top1
from mimkit.eval.linear import ProbeSettings, linear_probe
from mimkit.train.checkpoint import load_model, method_from_config


def model_at(run: str, size: int | None, untrained: bool):
    """The run's method (or its untrained twin), built for images of `size` when given: fixed
    position tables are those of the new grid, every learned weight is the run's."""
    model, cfg = load_model(run)
    if size is None and not untrained:
        return model, cfg
    cfg = copy.deepcopy(cfg)
    if size is not None:
        cfg.model.img_size = size
    torch.manual_seed(cfg.train.seed)  # the initialisation pretraining started from
    built = method_from_config(cfg).eval()
    if not untrained:
        tables = {k for k in built.state_dict() if k.endswith("pos_embed")}
        state = {k: v for k, v in model.state_dict().items() if k not in tables}
        missing, unexpected = built.load_state_dict(state, strict=False)
        assert set(missing) <= tables and not unexpected, (missing, unexpected)
    return built, cfg


def features(model, cfg, images, subset: list[str] | None) -> torch.Tensor:
    mean, std = feature_stats(cfg.data)
    if subset is None:
        return extract_features(model.encoder, images, mean, std, progress=False)
    chosen = Inputs({name: images[name] for name in subset})
    return extract_features(InputsEncoder(model), chosen, mean, std, progress=False)


def raw_pixels(cfg, images, subset: list[str] | None) -> torch.Tensor:
    if subset is None:
        return normalize(images, cfg.data.mean, cfg.data.std).flatten(1)
    specs = cfg.data.inputs
    parts = [normalize(images[n], specs[n].mean, specs[n].std).flatten(1) for n in subset]
    return torch.cat(parts, dim=1)


def scores(f_train, y_train, f_test, y_test, seeds: list[int], k: int) -> dict:
    return {
        "knn": knn_top1(f_train, y_train, f_test, y_test, k=k, temperature=0.07),
        "linear": [
            linear_probe(f_train, y_train, f_test, y_test, settings=ProbeSettings(seed=s)).top1
            for s in seeds
        ],
    }


@torch.no_grad()
def reconstruction_loss(model, cfg, images, seed: int = 0, batch: int = 50) -> float:
    """The method's masked-reconstruction loss on `images` (its contrastive term, if any, set to
    0), every batch with the same seeded masks: how well the pretext task holds at this size."""
    mean, std = feature_stats(cfg.data)
    settings = model.settings
    weight = getattr(settings, "contrast_weight", None)
    if weight is not None:
        settings.contrast_weight = 0.0
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(next(iter(images.values()))), batch):
            rows = {
                k: normalize(v[start : start + batch], mean[k], std[k]) for k, v in images.items()
            }
            out = model(rows, generator=torch.Generator().manual_seed(seed + start))
            n = len(next(iter(rows.values())))
            total, count = total + out.loss.item() * n, count + n
    finally:
        if weight is not None:
            settings.contrast_weight = weight
    return total / count


def mosaic(images: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Each input's items, n x n consecutive ones side by side in one image n times the side
    (the items left over dropped): a larger scene at the same resolution."""
    out = {}
    for name, x in images.items():
        count, c, h, w = x.shape
        groups = x[: count // (n * n) * n * n].reshape(-1, n, n, c, h, w)
        out[name] = groups.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, n * h, n * w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (or its checkpoint folder)")
    parser.add_argument("--subsets", nargs="+", help="inputs joined by '+'; none: one image input")
    parser.add_argument("--data", help="another data folder (same layout and statistics)")
    parser.add_argument("--size", type=int, help="image side of --data (default: the model's)")
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[0, 1],
        help="linear-probe seeds, comma-separated (default 0,1)",
    )
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--raw", action="store_true", help="also the raw-pixel baseline")
    parser.add_argument(
        "--recon",
        action="store_true",
        help="instead of probes: the masked-reconstruction loss on test",
    )
    parser.add_argument(
        "--mosaic", type=int, help="with --recon: N x N test items per image, at N times the side"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.mosaic and not args.recon:
        parser.error("--mosaic goes with --recon")
    side = args.size  # of the items read; a mosaic's models are built at n times it
    if args.mosaic and side is None:
        side = load_model(args.run)[1].model.image_hw[0]
    grid = side * args.mosaic if args.mosaic else args.size
    model, cfg = model_at(args.run, grid, untrained=False)
    twin, _ = model_at(args.run, grid, untrained=True)
    if args.data:
        cfg.data.path = args.data
    side = side or cfg.model.image_hw[0]
    x_train, y_train, x_test, y_test = load_labelled_splits(
        cfg.data, cfg.model.in_chans, (side, side), args.train_limit
    )
    result = {"run": args.run, "data": cfg.data.path, "size": side, "subsets": {}}
    probed = [] if args.recon else args.subsets or [None]
    for subset in [s.split("+") if s else None for s in probed]:
        name = "+".join(subset) if subset else "image"
        entry = {}
        for label, m in (("pretrained", model), ("untrained", twin)):
            f_train, f_test = (features(m, cfg, x, subset) for x in (x_train, x_test))
            entry[label] = scores(f_train, y_train, f_test, y_test, args.seeds, args.k)
        if args.raw:
            f_train, f_test = (raw_pixels(cfg, x, subset) for x in (x_train, x_test))
            entry["raw_pixels"] = scores(f_train, y_train, f_test, y_test, args.seeds, args.k)
        result["subsets"][name] = entry
    if args.mosaic:
        x_test = mosaic(x_test, args.mosaic)
        result.update(mosaic=args.mosaic, size=side * args.mosaic)
    if args.recon:
        result["reconstruction_loss"] = {
            "pretrained": reconstruction_loss(model, cfg, x_test),
            "untrained": reconstruction_loss(twin, cfg, x_test),
        }
    result["train_items"], result["test_items"] = len(y_train), len(y_test)

    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
