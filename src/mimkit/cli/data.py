"""`mimkit data info|synth|stats|pack`: summarise a data folder, make test data, per-band
mean/std, pack a folder or HF dataset into WebDataset shards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mimkit.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect data")
    dsub = p.add_subparsers(dest="action", required=True)
    info = dsub.add_parser("info", help="summarise a data folder (IDX files or images)")
    info.add_argument("path", help="folder of IDX files or of images, or 'fashion_mnist'")
    info.set_defaults(func=cmd_data_info)
    dsub.add_parser(
        "synth",
        help="generate test data: moving Fashion-MNIST videos, volumes, tiles, spectrograms, "
        "point-cloud shapes, Fashion-MNIST segmentation scenes; with several inputs per "
        "sample: Fashion-MNIST scenes as aligned image/depth/seg, pairs of views of one scene, "
        "tiles split into two band groups",
        configure=_synth_options,
    )
    _add_stats(dsub)
    _add_pack(dsub)


# cmd_data_synth's cases
SYNTH_KINDS = (
    "moving-fmnist", "volumes", "tiles", "spectrograms", "shapes", "fmnist-scenes",
    "fmnist-modal", "fmnist-pairs", "tile-groups",
)  # fmt: skip
MULTI_KINDS = SYNTH_KINDS[-3:]  # several inputs per sample (data.source: multi)


def _synth_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=SYNTH_KINDS, help="what to generate")
    p.add_argument("out", help="folder to write root/{train,test}/CLASS/ into")
    p.add_argument("--train", type=int, help="training items (default per kind)")
    p.add_argument("--test", type=int, help="test items (default per kind)")
    p.add_argument("--frames", type=int, default=16, help="moving-fmnist: frames per clip")
    p.add_argument(
        "--size",
        type=int,
        help="moving-fmnist canvas / tile side / scene or view side (default 64; 32 for "
        "fmnist-modal, fmnist-pairs and tile-groups)",
    )
    p.add_argument("--bands", type=int, default=6, help="tiles: number of bands")
    p.add_argument("--format", default="npy", choices=("npy", "tif"), help="tiles: file format")
    p.add_argument("--points", type=int, default=1024, help="shapes: points per cloud")
    p.add_argument(
        "--shift", type=int, default=8, help="fmnist-pairs: how far the two views may lie apart"
    )
    p.add_argument(
        "--layout",
        default="framed",
        choices=("framed", "field"),
        help="fmnist-modal: framed (1-3 items scaled to the scene, a ground ramp) or field "
        "(nothing depends on absolute position: fixed-size items, count growing with the area)",
    )
    p.add_argument(
        "--optical-bands", type=int, help="tile-groups: bands in the optical group (default half)"
    )
    p.add_argument(
        "--joint",
        action="store_true",
        help="tile-groups: four classes that need both groups (each alone tells at most half)",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=100.0,
        help="tile-groups --joint: pixel noise std (stripes 80-160; default: 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generator")
    p.set_defaults(func=cmd_data_synth)


def _add_stats(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "stats", help="per-channel (band) mean/std of a training split, for data.mean/data.std"
    )
    p.add_argument("path", help="data folder (with train/ or the items themselves)")
    p.add_argument(
        "--source",
        required=True,
        choices=(
            "multiband", "spectrogram", "volume", "video", "folder", "dicom", "geotiff", "multi",
        ),  # fmt: skip
        help="how to read the folder (multi: one sub-folder per input, statistics per input)",
    )
    p.add_argument("--channels", type=int, help="channels (bands) per item (not for multi)")
    p.add_argument(
        "--inputs",
        nargs="+",
        metavar="NAME=CHANNELS",
        help="multi: the inputs and their channels (default: the --config's data.inputs, else "
        "the folder's inputs.json from `mimkit data synth`)",
    )
    p.add_argument(
        "--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="item size in pixels"
    )
    p.add_argument(
        "--config",
        help="also write mean/std into this YAML config's data section (multi: into "
        "data.inputs.NAME)",
    )
    p.add_argument(
        "--bands", help="geotiff: the bands, by 0-based index or name, comma-separated (data.bands)"
    )
    p.set_defaults(func=cmd_data_stats)


def cmd_data_info(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.data.info import describe

    for line in describe(args.path):
        print(line)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    # numpy and the generators load only when the command runs (a fast --help)
    from mimkit.data import shapes, synthetic
    from mimkit.data.scenes import make_fmnist_scenes

    counts = {k: v for k, v in (("train", args.train), ("test", args.test)) if v is not None}
    if any(v < 1 for v in counts.values()):
        raise ConfigError("--train and --test must be >= 1")
    if args.kind in MULTI_KINDS:
        root = _synth_multi(args, counts)
        print(f"wrote {args.kind} to {root} (its inputs: {root / 'inputs.json'})")
        return 0
    args.size = args.size or 64
    if args.kind == "moving-fmnist":
        root = synthetic.make_moving_fmnist(
            args.out, frames=args.frames, size=args.size, seed=args.seed, **counts
        )
    elif args.kind == "volumes":
        root = synthetic.make_volumes(args.out, seed=args.seed, **counts)
    elif args.kind == "tiles":
        root = synthetic.make_tiles(
            args.out, bands=args.bands, size=args.size, fmt=args.format, seed=args.seed, **counts
        )
    elif args.kind == "shapes":
        root = shapes.make_shapes(args.out, points=args.points, seed=args.seed, **counts)
    elif args.kind == "fmnist-scenes":
        root = make_fmnist_scenes(args.out, size=args.size, seed=args.seed, **counts)
    else:
        root = synthetic.make_spectrograms(args.out, seed=args.seed, **counts)
    print(f"wrote {args.kind} to {root}")
    return 0


def _synth_multi(args: argparse.Namespace, counts: dict[str, int]) -> Path:
    # numpy and the generators load only when the command runs (a fast --help)
    from mimkit.data import multi_synth

    size = args.size or 32
    if args.kind == "fmnist-modal":
        return multi_synth.make_fmnist_modal(
            args.out, size=size, seed=args.seed, layout=args.layout, **counts
        )
    if args.kind == "fmnist-pairs":
        return multi_synth.make_fmnist_pairs(
            args.out, size=size, shift=args.shift, seed=args.seed, **counts
        )
    return multi_synth.make_tile_groups(
        args.out, bands=args.bands, optical=args.optical_bands, size=size, seed=args.seed,
        joint=args.joint, noise=args.noise, **counts,
    )  # fmt: skip


def cmd_data_stats(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.config import DataConfig, load_config
    from mimkit.data.info import data_stats, set_data_stats

    if args.source == "multi":
        return _multi_stats(args)
    if args.channels is None:
        raise ConfigError(f"data stats --source {args.source}: --channels is needed")
    bands = None
    if args.bands:
        bands = [int(b) if b.strip().isdigit() else b.strip() for b in args.bands.split(",")]
    cfg = DataConfig(source=args.source, path=args.path, bands=bands)
    stats = data_stats(cfg, args.channels, tuple(args.size))
    print(json.dumps(stats))
    if args.config:
        path = Path(args.config)
        load_config(path)  # refuse to edit a config that does not load
        path.write_text(set_data_stats(path.read_text(), stats, str(path)))  # comments kept
        print(f"wrote data.mean and data.std into {path}")
    return 0


def _add_pack(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "pack",
        help="decode and resize once into WebDataset tar shards (train with data.source=packed)",
        description="Pack an image folder (class sub-folders give labels) or a Hugging Face "
        "dataset on disk (save_to_disk or Parquet) into WebDataset tar shards of pre-resized "
        "uint8 images with labels, an index and per-channel mean/std (docs/packing.md).",
    )
    p.add_argument("src", help="image folder (with train/ or the images) or HF dataset folder")
    p.add_argument("out", help="folder to write the shards, index.npy and pack.json into")
    p.add_argument("--size", type=int, nargs="+", required=True, metavar="PX",
                   help="image side, or H W, the model will take (model.img_size)")  # fmt: skip
    p.add_argument("--channels", type=int, default=3, choices=(1, 3, 4), help="model.in_chans")
    p.add_argument("--split", default="train", choices=("train", "test"), help="which split")
    p.add_argument("--encoding", default="npy", choices=("npy", "png"),
                   help="npy: raw uint8, fastest to read; png: lossless, smaller")  # fmt: skip
    p.add_argument("--shard-samples", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding SRC")
    p.set_defaults(func=cmd_data_pack)


def cmd_data_pack(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from tqdm.auto import tqdm

    from mimkit.data.pack import pack_dataset

    if len(args.size) not in (1, 2) or min(args.size) < 1:
        raise ConfigError(f"--size takes one side or H W (>= 1), got {args.size}")
    size = (args.size[0], args.size[-1])
    with tqdm(unit="img", desc="pack", disable=None) as bar:  # no bar when not a terminal
        manifest = pack_dataset(
            args.src, args.out, size, args.channels, args.split, args.encoding,
            args.shard_samples, args.workers, progress=bar.update,
        )  # fmt: skip
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(manifest["skipped"].items()) if v)
    print(
        f"wrote {manifest['count']} samples in {len(manifest['shards'])} shards to {args.out}"
        + (f" (skipped {skipped})" if skipped else "")
    )
    stats = f"data.mean={manifest['mean']} data.std={manifest['std']}".replace(", ", ",")
    print(f"train with: data.source=packed data.path={args.out} {stats}")
    return 0


def _multi_stats(args: argparse.Namespace) -> int:
    """Per-input statistics of a `multi` folder; with --config, written into data.inputs."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.config import load_config
    from mimkit.data.config import DataConfig, InputConfig
    from mimkit.data.multi import input_stats, read_inputs_file, set_inputs_stats

    if args.inputs:
        inputs = {}
        for item in args.inputs:
            name, _, channels = item.partition("=")
            if not name or not channels.isdigit():
                raise ConfigError(f"--inputs {item!r}: expected NAME=CHANNELS, e.g. optical=3")
            inputs[name] = InputConfig(channels=int(channels))
    elif args.config:
        inputs = load_config(Path(args.config)).data.inputs
    else:
        inputs = read_inputs_file(args.path)
    cfg = DataConfig(source="multi", path=args.path, inputs=inputs)
    cfg.check()
    stats = input_stats(cfg, tuple(args.size))
    print(json.dumps(stats))
    if args.config:
        path = Path(args.config)
        load_config(path)  # refuse to edit a config that does not load
        path.write_text(set_inputs_stats(path.read_text(), stats, str(path)))  # comments kept
        print(f"wrote data.inputs.{{{','.join(stats)}}}.mean/std into {path}")
    return 0
