"""Samples with several inputs: aligned modalities, or two views of one scene (`source: multi`).

Layout: one sub-folder per input (`data.inputs`) in each split, each an ordinary class-folder
tree, the inputs of one sample sharing its id (class folder and file stem):

```
root/train/optical/3/tile_00007.npy    root/train/radar/3/tile_00007.npy
root/train/view1/3/pair_00007.png      root/train/view2/3/pair_00007.png   (+ offsets.csv)
root/test/...                          (or root/val/...)
```

An input's files are images (decoded to uint8, `channels` of them) or arrays (.npy, .npz,
TIFF: values kept as float32, as the `multiband` source keeps them); which, is decided by its
first file. Every input must have the model's size (no resizing: resampling a label map or
one view alone would break the alignment). A sample missing from one input, or whose file is
unusable, is skipped with one line naming the file and counted by reason.

Or one `.npz` file per sample (class folders as above, loose files unlabelled), holding one
array per input under the input's name, each (C_k, H, W) or (H, W) for one channel:

```
root/train/3/tile_00007.npz   {"optical": (3, H, W), "radar": (2, H, W)}   (np.savez)
root/test/...
```

The `.npz` layout is read when a split folder has none of the inputs' sub-folders. Its arrays
are kept as float32 values, as array inputs; a file missing an input's key, with an array of
the wrong type or rank, or not at the model's size is skipped with one line naming the
file and the key, and counted by reason (`data.on_bad_item: fail` refuses it instead).

A split is held as `Inputs`: a dict of (N, C_k, H, W) tensors keyed by input name, which
slicing and indexing with rows (`inputs[:8]`, `inputs[idx]`) cut in every input at once, so
the sources, the loop and the evaluation index it as they index an image tensor.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from mimkit.data.arrays import ARRAY_EXTENSIONS, BadItem, band_stats, check_values, read_array
from mimkit.data.config import DataConfig, InputConfig
from mimkit.data.folder import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    decode_image,
    list_images,
    split_folder,
)
from mimkit.data.transforms import normalize
from mimkit.errors import DataError

log = logging.getLogger(__name__)
OFFSETS_FILE = "offsets.csv"  # pairs of views: where each view was cut from its scene
INPUTS_FILE = "inputs.json"  # written by `mimkit data synth`: the inputs, their channels


class Inputs(dict):
    """Several inputs of the same samples: {name: (N, C_k, ...) tensor}, N the same for all.

    A string key gives one input; any other key (a slice, an index tensor, an int) cuts the
    same rows from every input and gives `Inputs` again. `len` stays the number of inputs (it
    is a dict); the number of samples is `rows`.
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return Inputs({name: tensor[key] for name, tensor in self.items()})

    @property
    def rows(self) -> int:
        return len(next(iter(self.values()))) if self else 0

    @property
    def device(self) -> torch.device:
        return next(iter(self.values())).device

    def to(self, *args: Any, **kwargs: Any) -> Inputs:
        return Inputs({name: tensor.to(*args, **kwargs) for name, tensor in self.items()})


def sample_count(images: torch.Tensor | dict[str, torch.Tensor]) -> int:
    """The number of samples of a batch: an image tensor's first axis, or an `Inputs`' rows."""
    if isinstance(images, dict):
        return len(next(iter(images.values()))) if images else 0
    return len(images)


def _input_files(folder: Path, name: str) -> tuple[dict[str, Path], dict[str, str], str]:
    """({sample id: file}, {sample id: class name}, 'images' or 'arrays') of one input folder."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder of input {name!r} not found (data.inputs.{name})")
    files, labels, classes = list_images(folder, IMAGE_EXTENSIONS | ARRAY_EXTENSIONS)
    kind = "arrays" if files[0].suffix.lower() in ARRAY_EXTENSIONS else "images"
    by_id, class_of = {}, {}
    for path, label in zip(files, labels, strict=True):
        sample = path.relative_to(folder).with_suffix("").as_posix()
        by_id[sample] = path
        class_of[sample] = classes[label] if label >= 0 else ""
    return by_id, class_of, kind


def _read_item(path: Path, kind: str, spec: InputConfig, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W): uint8 for images, float32 for arrays; BadItem (with a reason) when unusable."""
    if kind == "images":
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise BadItem("kind", f"{path}: an array among this input's images")
        try:
            item = decode_image(path, spec.channels, None)
        except (*DECODE_ERRORS, DataError) as exc:
            raise BadItem("undecodable", f"{path}: cannot decode image ({exc})") from None
    else:
        if path.suffix.lower() not in ARRAY_EXTENSIONS:
            raise BadItem("kind", f"{path}: an image among this input's arrays")
        array = check_values(read_array(path), path)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != spec.channels:
            raise BadItem(
                "shape", f"{path}: array of shape {array.shape}; expected ({spec.channels}, H, W)"
            )
        item = torch.from_numpy(array.astype(np.float32))
    if tuple(item.shape[-2:]) != tuple(size):
        raise BadItem(
            "size", f"{path}: {item.shape[-2]}x{item.shape[-1]} but model.img_size is "
            f"{size[0]}x{size[1]}"
        )  # fmt: skip
    return item


def _read_sample(
    sample: str, listed: dict, specs: dict[str, InputConfig], size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """{input: item} of one sample; BadItem when an input lacks it or its file is unusable."""
    missing = [name for name in specs if sample not in listed[name][0]]
    if missing:
        holder = next(listed[n][0][sample] for n in specs if n not in missing)
        raise BadItem(
            "missing_input",
            f"{holder}: sample {sample!r} has no file in input(s) {', '.join(missing)}",
        )
    return {
        name: _read_item(listed[name][0][sample], listed[name][2], spec, size)
        for name, spec in specs.items()
    }


def _per_sample_npz(folder: Path, specs: dict[str, InputConfig]) -> bool:
    """Whether `folder` is in the `.npz`-per-sample layout: none of the inputs' sub-folders."""
    return folder.is_dir() and not any((folder / name).is_dir() for name in specs)


def _npz_files(folder: Path, specs: dict[str, InputConfig]) -> tuple[dict[str, Path], dict]:
    """({sample id: .npz file}, {sample id: class name}) of a split in the `.npz` layout."""
    try:
        files, labels, classes = list_images(folder, {".npz"})
    except DataError:
        raise DataError(
            f"{folder}: neither a sub-folder per input ({', '.join(specs)}) nor one .npz file "
            "per sample holding them (data.inputs)"
        ) from None
    by_id, class_of = {}, {}
    for path, label in zip(files, labels, strict=True):
        sample = path.relative_to(folder).with_suffix("").as_posix()
        by_id[sample] = path
        class_of[sample] = classes[label] if label >= 0 else ""
    return by_id, class_of


def _read_npz_sample(
    path: Path, specs: dict[str, InputConfig], size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """{input: (C, H, W) float32} from one sample's `.npz` (one array per input, never
    unpickled); BadItem naming the file and the key when one is missing or unusable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in specs if name not in archive.files]
            if missing:
                raise BadItem(
                    "missing_input",
                    f"{path}: no array for input(s) {', '.join(missing)} (keys: "
                    f"{', '.join(archive.files) or 'none'}; data.inputs names them)",
                )
            arrays = {}
            for name in specs:
                try:
                    arrays[name] = archive[name]
                except ValueError as exc:  # object arrays need pickle: refused
                    raise BadItem("dtype", f"{path}: key {name!r}: cannot read ({exc})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadItem("unreadable", f"{path}: cannot read .npz archive ({exc})") from None
    return {
        name: _npz_item(arrays[name], f"{path}: key {name!r}", spec, size)
        for name, spec in specs.items()
    }


def _npz_item(
    array: np.ndarray, where: str, spec: InputConfig, size: tuple[int, int]
) -> torch.Tensor:
    """One input's array of a `.npz` sample as (C, H, W) float32, or BadItem naming `where`."""
    if array.dtype.kind not in "biuf":
        raise BadItem("dtype", f"{where}: array of type {array.dtype}; expected real numbers")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] != spec.channels:
        raise BadItem(
            "shape", f"{where}: array of shape {array.shape}; expected ({spec.channels}, H, W) "
            f"or (H, W) for one channel"
        )  # fmt: skip
    if tuple(array.shape[-2:]) != tuple(size):
        raise BadItem(
            "size", f"{where}: {array.shape[-2]}x{array.shape[-1]} but model.img_size is "
            f"{size[0]}x{size[1]}"
        )  # fmt: skip
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadItem("non_finite", f"{where}: {int((~np.isfinite(array)).sum())} NaN or inf")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _samples(
    folder: Path, specs: dict[str, InputConfig], size: tuple[int, int]
) -> tuple[list[str], dict[str, str], Callable[[str], dict[str, torch.Tensor]]]:
    """(sample ids, {id: class name}, reader of one sample by id) of a split in either layout:
    a sub-folder per input, or (none of them there) one `.npz` per sample."""
    if _per_sample_npz(folder, specs):
        files, class_of = _npz_files(folder, specs)
        return sorted(files), class_of, lambda sample: _read_npz_sample(files[sample], specs, size)
    listed = {name: _input_files(folder / name, name) for name in specs}
    class_of = {s: c for _, classes, _ in listed.values() for s, c in classes.items()}
    ids = sorted(set().union(*(by_id for by_id, _, _ in listed.values())))
    return ids, class_of, lambda sample: _read_sample(sample, listed, specs, size)


def load_multi_split(
    cfg: DataConfig,
    split: str,
    size: tuple[int, int],
    skipped_by: Counter[str] | None = None,
) -> tuple[Inputs, torch.Tensor]:
    """(Inputs of (N, C_k, H, W), labels (N,)) of a split: the samples every input holds.

    Labels come from the class folders (-1 for loose files); sample ids include the class
    folder, so an input cannot give one sample two classes.
    """
    if not cfg.path:
        raise DataError("data.path: the multi source needs a folder with one sub-folder per input")
    if not cfg.inputs:
        raise DataError("data.inputs: the multi source needs the inputs' names (sub-folders)")
    folder = split_folder(Path(cfg.path), split)
    ids, class_of, read = _samples(folder, cfg.inputs, size)
    class_names = sorted({c for c in class_of.values() if c})
    items: dict[str, list[torch.Tensor]] = {name: [] for name in cfg.inputs}
    labels, skipped = [], Counter()
    for sample in ids:
        try:
            row = read(sample)
        except DataError as exc:
            if cfg.on_bad_item == "fail":
                raise DataError(f"{exc} (data.on_bad_item=fail)") from None
            skipped[getattr(exc, "reason", "unreadable")] += 1
            log.warning("skipped %s", exc)
            continue
        for name, item in row.items():
            items[name].append(item)
        klass = class_of[sample]  # ids hold the class folder: one class in every input
        labels.append(class_names.index(klass) if klass else -1)
    if skipped_by is not None:
        skipped_by.update(skipped)
    if skipped:
        log.warning("%s: skipped %d of %d samples", folder, sum(skipped.values()), len(ids))
    if not labels:
        raise DataError(f"{folder}: none of {len(ids)} samples has a usable file in every input")
    inputs = Inputs({name: torch.stack(found) for name, found in items.items()})
    return inputs, torch.tensor(labels, dtype=torch.int64)


def input_stats(cfg: DataConfig, size: tuple[int, int]) -> dict[str, dict[str, list[float]]]:
    """{input: {"mean": [...], "std": [...]}} per channel of the training split, in the units
    `data.inputs.NAME.mean/std` expect (value / 255)."""
    inputs, _ = load_multi_split(cfg, "train", size)
    return {
        name: dict(zip(("mean", "std"), band_stats(x), strict=True)) for name, x in inputs.items()
    }


def normalize_inputs(inputs: dict[str, torch.Tensor], specs: dict[str, InputConfig]) -> Inputs:
    """Each input standardised with its own statistics (uint8 or float in, float32 out)."""
    return Inputs({k: normalize(x, specs[k].mean, specs[k].std) for k, x in inputs.items()})


def resample_inputs(
    inputs: dict[str, torch.Tensor],
    specs: dict[str, InputConfig],
    theta: torch.Tensor,
    out_hw: tuple[int, int],
) -> Inputs:
    """One affine crop-and-flip per sample (`theta` (B, 2, 3)) applied to every input alike,
    so aligned modalities stay aligned; label-like inputs sampled nearest."""
    out = Inputs()
    for name, x in inputs.items():
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *out_hw], align_corners=False)
        out[name] = F.grid_sample(
            x, grid, mode=specs[name].interpolation, padding_mode="reflection", align_corners=False
        )
    return out


def read_inputs_file(root: str | Path) -> dict[str, InputConfig]:
    """The inputs (channels, interpolation) `mimkit data synth` recorded in `root/inputs.json`."""
    path = Path(root) / INPUTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; name the inputs (--inputs NAME=CHANNELS or --config)")
    try:
        found = json.loads(path.read_text())["inputs"]
        return {name: InputConfig(**dict(spec)) for name, spec in found.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DataError(
            f'{path}: expected {{"inputs": {{NAME: {{"channels": C}}, ...}}}} ({exc})'
        ) from None


def read_offsets(root: str | Path, split: str) -> dict[str, tuple[int, int, int, int]]:
    """{sample id: (y1, x1, y2, x2)}: where `mimkit data synth fmnist-pairs` cut each view from
    its scene (view2 is view1 moved by (y2 - y1, x2 - x1) pixels)."""
    path = split_folder(Path(root), split) / OFFSETS_FILE
    if not path.is_file():
        raise DataError(f"{path}: no offsets file (written by `mimkit data synth fmnist-pairs`)")
    offsets = {}
    for n, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split(",")
        try:
            offsets[parts[0]] = tuple(int(v) for v in parts[1:5])
        except (ValueError, IndexError):
            raise DataError(f"{path}:{n}: expected id,y1,x1,y2,x2, got {line!r}") from None
    return offsets


def set_inputs_stats(text: str, stats: dict[str, dict[str, list[float]]], where: str) -> str:
    """`text` (a YAML config) with `data.inputs.NAME.mean/std` set for every input of `stats`,
    every other line (comments included) kept. Refused in one line when the section is not
    plain block YAML (flow-style `{...}` mappings are set by hand)."""
    lines = text.splitlines()
    for name, values in stats.items():
        for key in ("mean", "std"):
            flow = "[" + ", ".join(repr(float(v)) for v in values[key]) + "]"
            lines = _set_block_value(lines, ("data", "inputs", name, key), flow, where)
    new = "\n".join(lines) + "\n"
    try:
        tree = yaml.safe_load(new) or {}
        ok = all(
            tree["data"]["inputs"][name][key] == values[key]
            for name, values in stats.items()
            for key in ("mean", "std")
        )
    except (yaml.YAMLError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(f"{where}: could not set data.inputs.*.mean/std in place; set them by hand")
    return new


def _set_block_value(lines: list[str], path: tuple[str, ...], value: str, where: str) -> list[str]:
    """`lines` with the block-YAML key at `path` set to `value`, its sections made if missing."""
    start, end, indent = -1, len(lines), None  # the block being searched: (start, end)
    for depth, key in enumerate(path):
        body = [i for i in range(start + 1, end) if lines[i].strip() and not _comment(lines[i])]
        child = re.match(r"\s*", lines[body[0]]).group(0) if body else None
        if child is None or (indent is not None and len(child) <= len(indent)):
            child = "" if indent is None else indent + "  "
        found = next((i for i in body if re.match(rf"{child}{re.escape(key)}:", lines[i])), None)
        last = depth == len(path) - 1
        if found is None:
            new = [f"{child}{'  ' * n}{k}:" for n, k in enumerate(path[depth:])]
            new[-1] += f" {value}"
            at = (body[-1] + 1) if body else start + 1
            return lines[:at] + new + lines[at:]
        rest = lines[found].split(":", 1)[1]
        if last:
            comment = re.search(r"\s#.*$", rest)
            lines[found] = f"{child}{key}: {value}" + (comment.group(0) if comment else "")
            while found + 1 < len(lines) and re.match(rf"{child}\s*- ", lines[found + 1]):
                del lines[found + 1]  # a block list under the key goes with the old value
            return lines
        if rest.strip() and not _comment(rest):
            raise DataError(
                f"{where}: {'.'.join(path[: depth + 1])} is written inline; set "
                f"{'.'.join(path)} by hand to {value}"
            )
        start, indent = found, child
        end = next(
            (
                i
                for i in range(found + 1, len(lines))
                if lines[i].strip()
                and not _comment(lines[i])
                and len(re.match(r"\s*", lines[i]).group(0)) <= len(child)
            ),
            len(lines),
        )
    return lines


def _comment(line: str) -> bool:
    return line.strip().startswith("#")
