import gzip
import struct

import numpy as np
import pytest
import torch
from conftest import needs_fmnist
from PIL import Image

from mimkit.data.config import DataConfig
from mimkit.data.folder import ImageFolderDataset, collate_skip_corrupt, decode_image
from mimkit.data.idx import load_fashion_mnist, read_idx
from mimkit.data.sources import TrainSource, epoch_order, load_split
from mimkit.data.transforms import normalize, random_resized_crop_flip
from mimkit.errors import DataError


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_idx_folder(folder, n_train=40, n_test=20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), gz=True
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return folder


def test_idx_round_trip_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-ubyte", arr)
    write_idx(tmp_path / "b-ubyte.gz", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a-ubyte"), arr)
    assert np.array_equal(read_idx(tmp_path / "b-ubyte.gz"), arr)


def test_idx_errors_name_the_file(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(DataError, match="junk: not an IDX file"):
        read_idx(tmp_path / "junk")
    arr = np.zeros((2, 2, 2), dtype=np.uint8)
    write_idx(tmp_path / "short", arr)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="short: IDX header declares shape"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "missing")


def test_idx_source_from_a_path(tmp_path):
    folder = make_idx_folder(tmp_path / "mnistlike")
    cfg = DataConfig(source="idx", path=str(folder))
    images, labels = load_split(cfg, "test", 1, (28, 28))
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (20,)
    with pytest.raises(DataError, match="model.img_size is 32x32"):
        load_split(cfg, "train", 1, (32, 32))


def test_fashion_mnist_from_an_explicit_path(tmp_path):
    folder = make_idx_folder(tmp_path / "fm")
    images, labels = load_fashion_mnist("train", folder, verify=False)
    assert images.shape == (40, 1, 28, 28)
    with pytest.raises(DataError, match="content checksum mismatch"):
        load_fashion_mnist("train", folder)
    with pytest.raises(DataError, match="expected the four Fashion-MNIST IDX files"):
        load_fashion_mnist("train", tmp_path / "empty")


@needs_fmnist
def test_real_fashion_mnist_shapes():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 1000))


def test_channel_rules(tmp_path):
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.full((8, 8, 4), 9, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((8, 8, 3), 5, np.uint8), "RGB").save(tmp_path / "rgb.png")
    gray_as_rgb = decode_image(tmp_path / "gray.png", 3, None)
    assert gray_as_rgb.shape == (3, 8, 8) and torch.all(gray_as_rgb == 7)
    assert decode_image(tmp_path / "rgba.png", 3, None).shape == (3, 8, 8)
    assert decode_image(tmp_path / "rgb.png", 4, None)[3].min() == 255
    assert decode_image(tmp_path / "rgb.png", 3, (4, 6)).shape == (3, 4, 6)
    with pytest.raises(
        DataError, match=r"rgb\.png: image has 3 channel\(s\) \(mode RGB\) but 1 are expected"
    ):
        decode_image(tmp_path / "rgb.png", 1, None)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = ImageFolderDataset(tmp_path, channels=1, size=(8, 8))
    assert len(ds) == 7 and ds.classes == ["a", "b"]
    images, labels, kept = collate_skip_corrupt([ds[i] for i in range(len(ds))])
    assert kept.tolist() == [True] * 6 + [False]  # the broken file sorts last in class b
    assert images.shape == (6, 1, 8, 8)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_split_skips_corrupt_and_logs(tmp_path, caplog):
    train = tmp_path / "train" / "x"
    train.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(train / f"{i}.png")
    (train / "bad.jpg").write_bytes(b"garbage")
    cfg = DataConfig(source="folder", path=str(tmp_path))
    with caplog.at_level("WARNING", logger="mimkit"):
        images, labels = load_split(cfg, "train", 1, (8, 8))
    assert images.shape[0] == 4
    assert "skipped 1 corrupt image(s) of 5" in caplog.text


def test_folder_source_with_workers_counts_skips(tmp_path):
    for i in range(9):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x00" * 10)
    src = TrainSource(DataConfig(source="folder", path=str(tmp_path), num_workers=1), 1, (8, 8), 0)
    batches = list(src.batches(0, batch_size=5))
    assert sum(b.skipped for b in batches) == 1
    assert sum(len(b.images) for b in batches) == 9


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(50, 1, 2), epoch_order(50, 1, 2))
    assert not torch.equal(epoch_order(50, 1, 2), epoch_order(50, 1, 3))


def test_train_source_resumes_mid_epoch(tmp_path):
    cfg = DataConfig(source="idx", path=str(make_idx_folder(tmp_path / "d")), limit=30)
    src = TrainSource(cfg, 1, (28, 28), seed=0)
    full = [b.images for b in src.batches(0, 4)]
    tail = [b.images for b in src.batches(0, 4, start_step=3)]
    assert len(full) == 7 and src.num_items == 30
    assert all(torch.equal(a, b) for a, b in zip(full[3:], tail, strict=True))


def test_crop_identity_and_flip():
    x = normalize(torch.randint(0, 255, (4, 1, 12, 12), dtype=torch.uint8), [0.5], [0.25])
    same = random_resized_crop_flip(x, (12, 12), scale=(1, 1), ratio=(1, 1), hflip=False)
    assert torch.allclose(same, x, atol=1e-5)
    out = random_resized_crop_flip(x, (6, 6), generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    a = random_resized_crop_flip(x, (12, 12), generator=gen)
    b = random_resized_crop_flip(x, (12, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_download_refuses_files_whose_md5_differs(tmp_path):
    from mimkit.data.idx import download_fashion_mnist

    mirror = make_idx_folder(tmp_path / "mirror")  # look-alike files: right names, wrong bytes
    dest = tmp_path / "cache"
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz: MD5 [0-9a-f]{32} does not match"
    ):
        download_fashion_mnist(dest, url=mirror.as_uri() + "/")
    assert not any(dest.iterdir())  # nothing unverified is kept
