"""`mimkit data pack SRC OUT`: decode and resize once, write WebDataset tar shards (mimkit[packed]).

Why WebDataset tar shards and not HF `datasets` Arrow: both are well kept, but a tar shard is
the plain POSIX format every tool reads (`tar tf`, any language, any object store, WebDataset's
own streaming pipeline with `shuffle(n)`, `split_by_node`, `split_by_worker`), written with
`webdataset.ShardWriter`, appended to without a schema, and copied or deleted shard by shard.
What decides exactness is not the container but that the order is computed from an index rather
than from the stream: mimkit records each sample's byte offset when it writes the shards
(`index.npy`), so the per-epoch order (a full permutation, or the order a shuffle buffer over
seeded-order shards gives) is a pure function of (seed, epoch), the same split across DDP ranks
and DataLoader workers as every other source, and a restart resumes at the exact sample without
replaying a stream or saving a buffer. Streaming a tar through WebDataset's own pipeline instead
would make the order depend on worker timing and the buffer's state; Arrow would give the same
random access but not the stream-friendly, tool-agnostic files. HF `datasets` saved to disk are
read directly as well (`mimkit.data.hf_datasets`), and `pack` accepts them as a source.

Each sample is `KEY.npy` (the (C, H, W) uint8 array, NumPy's format, read with
`allow_pickle=False`) or `KEY.png` (lossless, about half the bytes, slower to decode), `KEY.cls`
(the label as text) and `KEY.json` (label and the source file). Samples keep the source's order
(item i of a folder is sample i of its pack), so a pack trains on the same batches as its
folder. Unusable source files are left out and counted. Shards are byte-reproducible (mtime 0).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mimkit.data.folder import ImageFolderDataset, collate_skip_corrupt, split_folder
from mimkit.data.hf_datasets import HFDiskDataset
from mimkit.data.shards import ENCODINGS, PACK_FORMAT, PACK_VERSION
from mimkit.errors import DataError

log = logging.getLogger(__name__)
SHARD_PATTERN = "shard-%06d.tar"


def is_hf_dataset(path: Path) -> bool:
    """Whether `path` is a save_to_disk folder or Parquet (else: an image folder)."""
    if path.is_file():
        return path.suffix == ".parquet"
    markers = ("state.json", "dataset_dict.json")
    return any((path / m).is_file() for m in markers) or any(path.glob("**/*.parquet"))


def encode_sample(image: torch.Tensor, encoding: str) -> bytes:
    """A (C, H, W) uint8 image as .npy or .png bytes."""
    buf = io.BytesIO()
    if encoding == "npy":
        np.save(buf, image.numpy(), allow_pickle=False)
    else:
        arr = image.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else np.ascontiguousarray(arr)).save(
            buf, format="PNG", compress_level=1
        )
    return buf.getvalue()


def scan_shard(path: Path, image_ext: str) -> list[tuple[int, int]]:
    """(byte offset, byte size) of each sample's image member, in the order written."""
    with tarfile.open(path, "r:") as tar:
        return [(m.offset_data, m.size) for m in tar if m.name.endswith("." + image_ext)]


def _source_dataset(src: Path, split: str, channels: int, size: tuple[int, int]) -> Any:
    if is_hf_dataset(src):
        return HFDiskDataset(src, channels, size, "skip", split)
    return ImageFolderDataset(split_folder(src, split), channels, size, "skip")


def pack_dataset(
    src: str | Path,
    out: str | Path,
    size: tuple[int, int],
    channels: int = 3,
    split: str = "train",
    encoding: str = "npy",
    shard_samples: int = 1000,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Pack `src` (an image folder or HF dataset on disk) into shards under `out`; returns the
    manifest written to `out/pack.json` (with per-channel mean/std of the packed pixels)."""
    try:
        import webdataset  # optional dependency: mimkit[packed]
    except ImportError:
        raise DataError("mimkit data pack needs webdataset: pip install 'mimkit[packed]'") from None

    src, out = Path(src), Path(out)
    if encoding not in ENCODINGS:
        raise DataError(f"--encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
    if shard_samples < 1:
        raise DataError(f"--shard-samples must be >= 1, got {shard_samples}")
    if (out / "pack.json").exists() or (out.is_dir() and any(out.glob("shard-*.tar"))):
        raise DataError(f"{out}: already holds a pack; choose another OUT or delete it")
    out.mkdir(parents=True, exist_ok=True)
    dataset = _source_dataset(src, split, channels, size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=64, num_workers=workers, collate_fn=collate_skip_corrupt
    )
    labels: list[int] = []
    skipped = Counter(dataset.skipped)
    total, sums, squares = 0, np.zeros(channels), np.zeros(channels)
    with webdataset.ShardWriter(
        str(out / SHARD_PATTERN), maxcount=shard_samples, maxsize=1 << 62, verbose=0,
        encoder=False, mtime=0.0,
    ) as sink:  # fmt: skip
        for images, batch_labels, kept in loader:
            done = len(kept)
            skipped["undecodable"] += int((~kept).sum()) - sum(
                1 for i in range(total, total + done) if i in getattr(dataset, "unusable", ())
            )
            total += done
            for image, label in zip(images, batch_labels.tolist(), strict=True):
                key = f"{len(labels):09d}"
                meta = {"label": label, "index": len(labels)}
                sink.write({
                    "__key__": key,
                    encoding: encode_sample(image, encoding),
                    "cls": str(label).encode(),
                    "json": json.dumps(meta).encode(),
                })  # fmt: skip
                labels.append(label)
            pixels = images.double().flatten(2)
            sums += pixels.mean(2).sum(0).numpy()
            squares += (pixels**2).mean(2).sum(0).numpy()
            if progress is not None:
                progress(done)
    if not labels:
        raise DataError(f"{src}: no usable images to pack")
    return _write_index(
        out, src, split, dataset, labels, encoding, channels, size, skipped, sums, squares
    )


def _write_index(
    out: Path, src: Path, split: str, dataset: Any, labels: list[int], encoding: str,
    channels: int, size: tuple[int, int], skipped: Counter[str], sums: np.ndarray,
    squares: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """index.npy from the shards as written, then pack.json (last: its presence marks a whole pack)."""
    shards, rows = [], []
    for s, path in enumerate(sorted(out.glob("shard-*.tar"))):
        found = scan_shard(path, encoding)
        for offset, nbytes in found:
            rows.append((s, offset, nbytes, labels[len(rows)]))
        shards.append({"name": path.name, "samples": len(found), "bytes": path.stat().st_size})
    if len(rows) != len(labels):
        raise DataError(f"{out}: the shards hold {len(rows)} samples, {len(labels)} were written")
    np.save(out / "index.npy", np.asarray(rows, dtype=np.int64).reshape(-1, 4), allow_pickle=False)
    n = len(labels)
    mean = sums / n / 255.0
    std = np.sqrt(np.maximum(squares / n / 255.0**2 - mean**2, 0.0))
    manifest = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "encoding": encoding,
        "channels": channels,
        "size": list(size),
        "count": n,
        "classes": list(getattr(dataset, "classes", [])),
        "source": str(src),
        "split": split,
        "skipped": dict(skipped),
        "mean": [round(float(x), 4) for x in mean],
        "std": [round(float(x), 4) for x in std],
        "shards": shards,
    }
    (out / "pack.json").write_text(json.dumps(manifest, indent=1))
    return manifest
