"""Reading packed datasets: WebDataset tar shards written by `mimkit data pack` (`data.pack`).

A pack is a folder:

    pack.json            what the pack holds: image size, channels, encoding, classes, shards
    index.npy            int64 (N, 4): shard, byte offset, byte size of each sample's image,
                         label; numbered in the source's own order (item i of a folder is
                         sample i of its pack)
    shard-000000.tar     WebDataset shards: members KEY.npy (or KEY.png), KEY.cls, KEY.json

`PackedShards` is a map-style dataset over the index: a sample is one `pread` of its image
bytes at the recorded offset, decoded with NumPy's `.npy` reader (`allow_pickle=False`) or PIL
for PNG; nothing is unpickled. The training order comes from `PackedShards.order(seed, epoch)`:

* `data.shuffle_buffer=0` (default): `epoch_order`, the same full permutation every other source
  uses, so a pack trains on exactly the batches its folder would, in the same order;
* `data.shuffle_buffer=K`: the stream order: the shards in a seeded order, read through a
  K-sample shuffle buffer (as `webdataset.shuffle` would), so a global batch draws from a window
  of about K samples in a few consecutive shards (local reads, a page-cache working set of K
  samples instead of the whole pack).

Both orders are pure functions of (index, seed, epoch), computed on the index without reading a
byte, so the loop's existing mechanics apply unchanged: each rank reads its rows of each global
batch, DataLoader workers take whole batches (no sample is read twice), and a resumed run starts
at its saved micro-batch, i.e. at the exact sample.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mimkit.data.folder import DECODE_ERRORS, to_channels
from mimkit.errors import DataError

log = logging.getLogger(__name__)

PACK_FORMAT = "mimkit-pack"
PACK_VERSION = 1
ENCODINGS = ("npy", "png")
# the fields of pack.json a reader needs, and the type each must have
REQUIRED_FIELDS = {
    "format": str,
    "version": int,
    "encoding": str,
    "channels": int,
    "size": list,
    "count": int,
    "shards": list,
}
TRUNCATED, MISSING_SHARD = "truncated_shard", "missing_shard"


def read_manifest(root: Path) -> dict[str, Any]:
    """pack.json, checked field by field (one line naming the first wrong field)."""
    path = root / "pack.json"
    if not path.is_file():
        raise DataError(
            f"{root}: no pack.json; not a mimkit pack (make one with `mimkit data pack SRC OUT`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable JSON ({exc})") from None
    _check_fields(manifest, path)
    if manifest["format"] != PACK_FORMAT or manifest["version"] > PACK_VERSION:
        raise DataError(
            f"{path}: format {manifest['format']!r} version {manifest['version']}; "
            f"this mimkit reads {PACK_FORMAT!r} up to version {PACK_VERSION}"
        )
    if manifest["encoding"] not in ENCODINGS:
        raise DataError(
            f"{path}: field 'encoding' is {manifest['encoding']!r}; expected one of {list(ENCODINGS)}"
        )
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or not {"name", "samples", "bytes"} <= set(shard):
            raise DataError(f"{path}: shards[{i}] needs 'name', 'samples' and 'bytes'")
    return manifest


def pack_stats(path: str | Path | None) -> tuple[list[float], list[float]]:
    """(mean, std) per channel that `mimkit data pack` measured, for data.mean/data.std (the
    train split's: `path/train` when the pack has one)."""
    if not path:
        raise DataError("data.path: the packed source needs the folder `mimkit data pack` wrote")
    root = Path(path) / "train" if (Path(path) / "train" / "pack.json").is_file() else Path(path)
    manifest = read_manifest(root)
    stats = manifest.get("mean"), manifest.get("std")
    if not all(isinstance(v, list) and v for v in stats):
        raise DataError(f"{root / 'pack.json'}: no 'mean'/'std'; set data.mean and data.std")
    return list(stats[0]), list(stats[1])


def _check_fields(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in manifest:
            raise DataError(f"{path}: missing field {name!r}")
        if not isinstance(manifest[name], kind):
            raise DataError(f"{path}: field {name!r} should be a {kind.__name__}")


def read_index(root: Path, manifest: dict[str, Any]) -> np.ndarray:
    path = root / "index.npy"
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the sample index ({exc})") from None
    count = manifest["count"]
    if index.dtype != np.int64 or index.shape != (count, 4):
        raise DataError(
            f"{path}: index of type {index.dtype} and shape {index.shape}; expected int64 "
            f"({count}, 4) for the {count} samples of pack.json"
        )
    if count and not 0 <= index[:, 0].min() <= index[:, 0].max() < len(manifest["shards"]):
        raise DataError(f"{path}: shard numbers outside the {len(manifest['shards'])} shards")
    return index


@functools.cache
def npy_header(channels: int, size: tuple[int, int]) -> bytes:
    """The .npy header `np.save` writes for a uint8 (channels, *size) array."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((channels, *size), dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()[: -channels * size[0] * size[1]]


def decode_sample(
    data: bytes | bytearray, encoding: str, channels: int, size: tuple[int, int], where: str
) -> torch.Tensor:
    """(C, H, W) uint8 from a sample's stored bytes; DataError (or PIL's errors) when they are
    not the image pack.json promises."""
    if encoding == "npy":
        header = npy_header(channels, size)
        if len(data) == len(header) + channels * size[0] * size[1] and data.startswith(header):
            # the header every sample of a pack has: the pixels are read in place
            return torch.frombuffer(data, dtype=torch.uint8, offset=len(header)).view(channels, *size)
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if arr.dtype != np.uint8 or arr.shape != (channels, *size):
            raise DataError(
                f"{where}: array of type {arr.dtype} and shape {arr.shape}; expected uint8 "
                f"{(channels, *size)}"
            )
        return torch.from_numpy(arr.copy())
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        arr = to_channels(image, channels, where)
    if arr.shape[:2] != tuple(size):
        raise DataError(
            f"{where}: image is {arr.shape[0]}x{arr.shape[1]}; expected {size[0]}x{size[1]}"
        )
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


def stream_order(
    shard_of: np.ndarray, num_shards: int, seed: int, epoch: int, buffer: int
) -> torch.Tensor:
    """The order a shuffled stream gives: the shards in a seeded order, each read in its stored
    order, through a `buffer`-sample shuffle buffer (full: each new sample replaces a random one,
    which is emitted; at the end the rest in random order). A pure function of its arguments.

    `shard_of[i]` is the shard of sample i. The simulation is one Python step per sample
    (about a second per million samples, once per epoch and process).
    """
    rng = np.random.Generator(np.random.PCG64([seed, epoch, 0x5EED]))
    shards = rng.permutation(num_shards)
    place = np.empty(num_shards, dtype=np.int64)
    place[shards] = np.arange(num_shards)
    # the samples by their shard's place, each shard's in stored (index) order
    stream = np.argsort(place[shard_of], kind="stable")
    buffer = max(1, min(buffer, len(stream)))
    held = stream[:buffer].tolist()
    picks = rng.integers(0, buffer, size=max(0, len(stream) - buffer)).tolist()
    out = []
    for item, j in zip(stream[buffer:].tolist(), picks, strict=True):
        out.append(held[j])
        held[j] = item
    out += [held[j] for j in rng.permutation(len(held))]
    return torch.tensor(out, dtype=torch.int64)


class PackedShards(torch.utils.data.Dataset):
    """Items are (image uint8 (C, H, W), label, ok), read from a pack's shards by offset.

    A shard that is missing or shorter than pack.json records makes its unreachable samples
    unusable: counted by reason in `skipped` and skipped whenever drawn (or refused at open with
    `on_bad="fail"`). A sample whose bytes do not decode is skipped like a corrupt image file.
    """

    def __init__(
        self, root: str | Path, channels: int, size: tuple[int, int], on_bad: str = "skip"
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: packed dataset folder not found")
        manifest = read_manifest(self.root)
        self.manifest = manifest
        self.encoding = manifest["encoding"]
        self.channels, self.size, self.on_bad = channels, tuple(size), on_bad
        packed = (manifest["channels"], tuple(manifest["size"]))
        if packed != (channels, self.size):
            raise DataError(
                f"{self.root}: packed as {packed[0]}-channel {packed[1][0]}x{packed[1][1]} "
                f"images but the model takes {channels}-channel {self.size[0]}x{self.size[1]}; "
                "pack again with --channels/--size, or set model.in_chans/model.img_size"
            )
        self.index = read_index(self.root, manifest)
        self.labels = self.index[:, 3].tolist()
        self.classes = list(manifest.get("classes", []))
        self.shard_paths = [self.root / s["name"] for s in manifest["shards"]]
        self.unusable, self.skipped = self._check_shards()
        self._files: dict[int, int] = {}  # shard -> open descriptor, per process

    def _check_shards(self) -> tuple[set[int], Counter[str]]:
        """Samples no read can reach: their shard is missing or cut short."""
        bad: set[int] = set()
        skipped: Counter[str] = Counter()
        for s, (path, shard) in enumerate(
            zip(self.shard_paths, self.manifest["shards"], strict=True)
        ):
            have = path.stat().st_size if path.is_file() else None
            if have is not None and have >= shard["bytes"]:
                continue
            ends = self.index[:, 1] + self.index[:, 2]
            lost = np.flatnonzero((self.index[:, 0] == s) & (True if have is None else ends > have))
            reason = MISSING_SHARD if have is None else TRUNCATED
            detail = (
                f"{path}: shard missing" if have is None
                else f"{path}: shard truncated ({have} of {shard['bytes']} bytes)"
            ) + f"; {len(lost)} of its {shard['samples']} samples cannot be read"  # fmt: skip
            if self.on_bad == "fail":
                raise DataError(f"{detail} (data.on_bad_item=fail)")
            log.warning("skipped %s", detail)
            bad.update(lost.tolist())
            skipped[reason] += len(lost)
        if len(self.index) and len(bad) == len(self.index):
            raise DataError(
                f"{self.root}: none of the {len(self.index)} packed samples can be read"
            )
        return bad, skipped

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own descriptors
        return {**self.__dict__, "_files": {}}

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def read_bytes(self, index: int) -> bytearray:
        shard, offset, size, _ = self.index[index].tolist()
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.shard_paths[shard], os.O_RDONLY)
        data = bytearray(size)  # writable: the decoded image may be a view of it
        if os.preadv(fd, [data], offset) != size:
            raise DataError(f"{self.shard_paths[shard]}: sample {index} cut short")
        return data

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        where = f"{self.root}: sample {index}"
        try:
            if index in self.unusable:
                raise DataError(f"{where}: its shard is missing or truncated")
            image = decode_sample(
                self.read_bytes(index), self.encoding, self.channels, self.size, where
            )
        except (*DECODE_ERRORS, DataError) as exc:
            if self.on_bad == "fail":
                raise DataError(f"{where}: cannot decode ({exc}) (data.on_bad_item=fail)") from None
            return (
                torch.zeros(self.channels, *self.size, dtype=torch.uint8),
                self.labels[index],
                False,
            )
        return image, self.labels[index], True

    def order(self, num_items: int, seed: int, epoch: int, buffer: int) -> torch.Tensor:
        """The stream order of the first `num_items` samples with a `buffer`-sample shuffle
        buffer (`stream_order`)."""
        order = stream_order(self.index[:, 0], len(self.shard_paths), seed, epoch, buffer)
        return order[order < num_items] if num_items < len(self.index) else order
