"""IDX files (MNIST, Fashion-MNIST): a tiny binary format, read straight into uint8 tensors.

Fashion-MNIST is looked for, in order: a path the user gives, `$MIMKIT_DATA/fashion-mnist`,
Debian's `dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist`), and the user
cache; when it is nowhere and `download=True`, the official files are fetched and checked
against their published MD5 sums before use.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import torch

from mimkit.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 sums of the official gzip files, as published in the Fashion-MNIST README.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# SHA-256 of the decompressed IDX bytes: the same for the official files and for repacks such
# as Debian's (whose .gz files differ byte-wise), so every local copy is checked on load.
FASHION_MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape.

    With `expected_sha256`, the decompressed bytes must hash to it (a damaged copy is refused).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: IDX file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise DataError(f"{path}: content checksum mismatch (damaged or not the official file)")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header ({len(data)} bytes; {ndim} dimension(s) need {header})"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache() -> Path:
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mimkit" / "fashion-mnist"
    )


def _has_files(folder: Path) -> bool:
    return all(
        (folder / name).is_file() or (folder / name[:-3]).is_file() for name in FASHION_MNIST_FILES
    )


def download_fashion_mnist(dest: Path, url: str = FASHION_MNIST_URL) -> Path:
    """Fetch the four official files into `dest`, verifying each MD5 before it is kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MNIST_FILES.items():
        target = dest / name
        if target.is_file() and md5sum(target) == md5:
            continue
        tmp = target.with_suffix(".part")
        try:
            urllib.request.urlretrieve(url + name, tmp)
        except OSError as exc:
            raise DataError(f"could not download {url + name}: {exc}") from exc
        got = md5sum(tmp)
        if got != md5:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{url + name}: MD5 {got} does not match the published {md5}")
        tmp.replace(target)
    return dest


def find_fashion_mnist(path: str | Path | None = None, download: bool = False) -> Path:
    """The folder holding the Fashion-MNIST IDX files, or a DataError saying how to get them."""
    if path:
        folder = Path(path).expanduser()
        if not _has_files(folder):
            raise DataError(
                f"{folder}: expected the four Fashion-MNIST IDX files ({', '.join(FASHION_MNIST_FILES)})"
            )
        return folder
    candidates = [DEBIAN_FASHION_MNIST, default_cache()]
    if os.environ.get("MIMKIT_DATA"):
        candidates.insert(0, Path(os.environ["MIMKIT_DATA"]) / "fashion-mnist")
    for folder in candidates:
        if _has_files(folder):
            return folder
    if download:
        return download_fashion_mnist(default_cache())
    raise DataError(
        "Fashion-MNIST not found. Install it with `apt-get install dataset-fashion-mnist` "
        f"(files go to {DEBIAN_FASHION_MNIST}), pass data.path=FOLDER holding the IDX files, "
        "or set data.download=true to fetch the official files (MD5-checked)."
    )


def _read_split(folder: Path, stem: str, verify: bool) -> np.ndarray:
    expected = FASHION_MNIST_CONTENT_SHA256[stem] if verify else None
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return read_idx(folder / name, expected)
    raise DataError(f"{folder}: missing {stem}(.gz)")


def load_fashion_mnist(
    split: str, path: str | Path | None = None, download: bool = False, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) for split 'train' or 'test'.

    `verify` checks the content checksums of the real data set; turn it off for look-alike
    files in the same layout (tests, subsets).
    """
    if split not in ("train", "test"):
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(path, download)
    prefix = "train" if split == "train" else "t10k"
    images = _read_split(folder, f"{prefix}-images-idx3-ubyte", verify)
    labels = _read_split(folder, f"{prefix}-labels-idx1-ubyte", verify)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} do not pair up"
        )
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
