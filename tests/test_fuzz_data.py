"""Fuzz: corrupt files of every kind the readers accept, each answered in one line or counted.

A generator per kind (images, IDX, arrays, volumes, video, safetensors weights) writes damaged
files; each case asserts a one-line `mimkit: error:` naming the file and exit 2, or a skip
counted by reason, never a traceback, and (through `pretrain`) that the checkpoint already in
out_dir is unchanged, byte for byte. docs/reliability.md lists every class with its outcome;
`scripts/fuzz_full.sh` adds random byte-level damage to many more files.
"""

import gzip
import hashlib
import io
import json
import os
import random
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_overrides
from PIL import Image
from safetensors.torch import save_file
from test_data import make_idx_folder, write_idx

from mimkit.cli.main import main
from mimkit.config import load_config
from mimkit.data.config import DataConfig
from mimkit.data.sources import TrainSource, load_split
from mimkit.errors import DataError
from mimkit.train.loop import pretrain

PRESET = "configs/fmnist_mae_tiny.yaml"
SEED = int(os.environ.get("MIMKIT_FUZZ_SEED", "0"))
ROUNDS = int(os.environ.get("MIMKIT_FUZZ_ROUNDS", "3"))


def one_line_error(capsys, argv, *names):
    """Run the CLI; assert exit 2 and one stderr line naming each of `names`, no traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mimkit: error:")]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in errors[0], errors[0]
    return errors[0]


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---- images ----------------------------------------------------------------------------------


def png_bytes(array, mode=None, **save):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def bomb_png(width=100_000, height=100_000):
    """A tiny PNG whose header claims `width` x `height` grey pixels."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def grey_animated_gif():
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)).convert("P") for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def palette_with_transparency():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), np.uint8))
    image = image.convert("P", palette=Image.ADAPTIVE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


GOOD = png_bytes(np.full((28, 28), 128, np.uint8))
# (name, file name, bytes, the reason it is skipped for on a 1-channel model, or None: usable)
IMAGE_CASES = [
    ("random bytes", "x.png", bytes(range(200)), "unreadable"),
    ("empty file", "x.png", b"", "unreadable"),
    ("decompression bomb", "x.png", bomb_png(), "too_large"),
    ("bomb just over the limit", "x.png", bomb_png(12_000, 12_000), "too_large"),
    ("colour into one channel", "x.png", png_bytes(np.zeros((28, 28, 3), np.uint8)), "channels"),
    ("CMYK JPEG", "x.jpg", png_bytes(np.zeros((28, 28, 4), np.uint8), "CMYK", format="JPEG"),
     "channels"),
    ("palette with transparency", "x.png", palette_with_transparency(), "channels"),
    ("grey animated GIF", "x.gif", grey_animated_gif(), None),
    ("16-bit grey", "x.png", png_bytes(np.full((28, 28), 40000, np.uint16)), None),
    ("bilevel", "x.png", png_bytes(np.zeros((28, 28), bool)), None),
    ("grey + alpha", "x.png", png_bytes(np.zeros((28, 28, 2), np.uint8), "LA"), None),
]  # fmt: skip


def image_folder(tmp_path, name, content, good=8):
    root = tmp_path / "imgs" / "train" / "a"
    root.mkdir(parents=True)
    for i in range(good):
        (root / f"{i}.png").write_bytes(GOOD)
    (root / f"zz_{name}").write_bytes(content)
    return tmp_path / "imgs"


@pytest.mark.parametrize(("case", "name", "content", "reason"), IMAGE_CASES)
def test_image_cases_are_usable_or_skipped_by_reason_at_scan(tmp_path, case, name, content, reason):
    root = image_folder(tmp_path, name, content)
    source = TrainSource(DataConfig(source="folder", path=str(root)), 1, (28, 28), 0)
    assert source.skipped == (Counter({reason: 1}) if reason else Counter())
    batches = list(source.batches(0, batch_size=9))
    assert sum(b.skipped for b in batches) == (1 if reason else 0)
    split = Counter()
    images, _ = load_split(DataConfig(source="folder", path=str(root)), "train", 1, (28, 28), split)
    assert len(images) == (8 if reason else 9) and split == source.skipped


def test_a_grey_animated_gif_reads_its_first_frame_as_grey(tmp_path):
    root = image_folder(tmp_path, "a.gif", grey_animated_gif(), good=0)
    images, _ = load_split(DataConfig(source="folder", path=str(root)), "train", 1, (28, 28))
    assert images.shape == (1, 1, 28, 28) and int(images.float().mean().round()) == 10


def test_on_bad_item_fail_refuses_the_first_bad_file_by_name(tmp_path):
    root = image_folder(tmp_path, "bomb.png", bomb_png())
    with pytest.raises(DataError, match=r"zz_bomb\.png: .*on_bad_item=fail"):
        TrainSource(DataConfig(source="folder", path=str(root), on_bad_item="fail"), 1, (28, 28), 0)


def test_data_info_and_pretrain_survive_a_bomb_and_count_it(tmp_path, capsys):
    root = image_folder(tmp_path, "bomb.png", bomb_png(), good=16)
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "too large (decompression bombs, would be skipped): 1" in out
    args = [
        "pretrain", PRESET, *tiny_model_overrides(tmp_path / "run"), "data.source=folder",
        f"data.path={root}", "train.batch_size=8", "train.max_steps=2", "--no-eval",
    ]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["skipped_items"] == {"too_large": 1}
    assert lines[-1]["event"] == "end" and lines[-1]["skipped_items"] == {"too_large": 1}


def test_random_damage_to_images_never_escapes(tmp_path):
    """Bytes flipped, cut and inserted at random in real PNG/GIF/JPEG files: every file is
    usable or skipped by reason; nothing else escapes."""
    rng = random.Random(SEED)
    originals = [
        GOOD,
        grey_animated_gif(),
        png_bytes(np.zeros((28, 28, 3), np.uint8), format="JPEG"),
    ]
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(20 * ROUNDS):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            action = rng.choice(("flip", "cut", "insert"))
            if action == "flip":
                data[at] ^= 1 << rng.randrange(8)
            elif action == "cut":
                del data[at:]
                if not data:
                    break
            else:
                data[at:at] = os.urandom(rng.randint(1, 64))
        (root / f"{i:03d}.png").write_bytes(bytes(data))
    (root / "good.png").write_bytes(GOOD)
    source = TrainSource(DataConfig(source="folder", path=str(root)), 1, (28, 28), 0)
    skipped = sum(b.skipped for b in source.batches(0, batch_size=len(source.labels)))
    assert skipped >= sum(source.skipped.values())


# ---- IDX ---------------------------------------------------------------------------------------


def idx_case(folder, case):
    make_idx_folder(folder, n_train=40, n_test=10)
    labels = folder / "train-labels-idx1-ubyte"
    images = folder / "train-images-idx3-ubyte.gz"
    rng = np.random.default_rng(0)
    if case == "fewer labels":
        write_idx(labels, rng.integers(0, 10, (30,)))
        return labels
    if case == "more labels":
        write_idx(labels, rng.integers(0, 10, (50,)))
        return labels
    if case == "2-D labels":
        write_idx(labels, rng.integers(0, 10, (40, 2)))
        return labels
    if case == "truncated header":
        labels.write_bytes(b"\x00\x00\x08\x01\x00")
        return labels
    if case == "zero dimensions":
        labels.write_bytes(b"\x00\x00\x08\x00")
        return labels
    if case == "bad magic":
        labels.write_bytes(b"GIF89a....")
        return labels
    if case == "truncated body":
        labels.write_bytes(labels.read_bytes()[:-5])
        return labels
    if case == "float images":
        array = rng.random((40, 28, 28)).astype(">f4")
        header = bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", *array.shape)
        images.write_bytes(gzip.compress(header + array.tobytes()))
        return images
    if case == "broken gzip":
        images.write_bytes(gzip.compress(b"x" * 100)[:-8])
        return images
    raise AssertionError(case)


IDX_CASES = [
    "fewer labels", "more labels", "2-D labels", "truncated header", "zero dimensions",
    "bad magic", "truncated body", "float images", "broken gzip",
]  # fmt: skip


@pytest.mark.parametrize("case", IDX_CASES)
def test_damaged_idx_files_are_one_line_naming_the_file(tmp_path, capsys, case):
    bad = idx_case(tmp_path / "idx", case)
    # a run already checkpointed in out_dir: the refused run must leave it as it was
    good = make_idx_folder(tmp_path / "good")
    run = tmp_path / "run"
    common = [*tiny_model_overrides(run), "train.batch_size=8", "eval.knn=false"]
    pretrain(
        load_config(PRESET, [*common, "data.source=idx", f"data.path={good}", "train.max_steps=1"])
    )
    before = checksums(run / "checkpoint")
    argv = ["pretrain", PRESET, *common, "data.source=idx", f"data.path={bad.parent}", "--no-eval"]
    one_line_error(capsys, argv, bad.name)
    assert checksums(run / "checkpoint") == before


# ---- arrays and volumes ----------------------------------------------------------------------


ARRAY_CASES = [
    ("nan", lambda: np.full((2, 16, 16), np.nan, np.float32), "non_finite"),
    ("inf", lambda: np.full((2, 16, 16), np.inf, np.float64), "non_finite"),
    ("complex", lambda: np.zeros((2, 16, 16), np.complex64), "dtype"),
    ("strings", lambda: np.full((2, 16, 16), "a"), "dtype"),
    ("wrong bands", lambda: np.zeros((3, 16, 16), np.float32), "shape"),
    ("wrong size", lambda: np.zeros((2, 8, 8), np.float32), "size"),
    ("empty", lambda: np.zeros((2, 0, 16), np.float32), "shape"),
]


def array_folder(tmp_path, bad_name, write_bad, good=4):
    root = tmp_path / "arr" / "train" / "a"
    root.mkdir(parents=True)
    for i in range(good):
        np.save(root / f"{i}.npy", np.random.default_rng(i).random((2, 16, 16), dtype=np.float32))
    write_bad(root / bad_name)
    return tmp_path / "arr"


@pytest.mark.parametrize(("case", "make", "reason"), ARRAY_CASES)
def test_bad_arrays_are_skipped_by_reason(tmp_path, case, make, reason):
    root = array_folder(tmp_path, "bad.npy", lambda p: np.save(p, make()))
    skipped = Counter()
    cfg = DataConfig(source="multiband", path=str(root))
    items, _ = load_split(cfg, "train", 2, (16, 16), skipped)
    assert len(items) == 4 and skipped == Counter({reason: 1})
    with pytest.raises(DataError, match=r"bad\.npy: .*on_bad_item=fail"):
        load_split(
            DataConfig(source="multiband", path=str(root), on_bad_item="fail"), "train", 2, (16, 16)
        )


@pytest.mark.parametrize(
    "write",
    [
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
        lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"),
        lambda p: p.write_bytes(os.urandom(300)),
    ],
    ids=["pickled objects", "truncated header", "random bytes"],
)
def test_unreadable_arrays_are_skipped_never_unpickled(tmp_path, write):
    root = array_folder(tmp_path, "bad.npy", write)
    skipped = Counter()
    items, _ = load_split(
        DataConfig(source="multiband", path=str(root)), "train", 2, (16, 16), skipped
    )
    assert len(items) == 4 and skipped == Counter({"unreadable": 1})


def test_data_stats_never_writes_nan_and_keeps_comments(tmp_path, capsys):
    root = tmp_path / "arr" / "train"
    root.mkdir(parents=True)
    np.save(root / "one.npy", np.ones((2, 1, 1), np.float32))  # one value per band: no std
    config = tmp_path / "c.yaml"
    config.write_text(Path("configs/fmnist_mae_tiny.yaml").read_text())
    before = config.read_text()
    argv = ["data", "stats", tmp_path / "arr", "--source", "multiband", "--channels", "2",
            "--size", "1", "1", "--config", config]  # fmt: skip
    one_line_error(capsys, argv, "data stats")
    assert config.read_text() == before
    for i in range(3):
        np.save(root / f"{i}.npy", np.random.default_rng(i).random((2, 1, 1), dtype=np.float32))
    config.write_text("# my run\nmodel:\n  preset: vit_tiny  # keep me\ndata:\n  # stats go here\n"
                      "  mean:\n  - 0.1\n  std: [0.2]  # old\n  hflip: false\n")  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    text = config.read_text()
    assert "# my run" in text and "# keep me" in text and "# stats go here" in text
    assert "nan" not in text.lower() and "hflip: false" in text and "- 0.1" not in text


def test_volumes_of_differing_depth_and_a_nan_voxel(tmp_path):
    root = tmp_path / "vol" / "train"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(root / f"{i}.npy", rng.random((8, 16, 16), dtype=np.float32))
    np.save(root / "deep.npy", rng.random((12, 16, 16), dtype=np.float32))
    nan = rng.random((8, 16, 16), dtype=np.float32)
    nan[3, 4, 5] = np.nan
    np.save(root / "nan.npy", nan)
    skipped = Counter()
    items, _ = load_split(
        DataConfig(source="volume", path=str(tmp_path / "vol")), "train", 1, (16, 16), skipped
    )
    assert items.shape == (4, 1, 8, 16, 16)  # the deep one cut to the common depth, not the rule
    assert skipped == Counter({"non_finite": 1})


def test_undecodable_video_is_skipped_and_counted(tmp_path):
    pytest.importorskip("av")
    from mimkit.data.video import write_video

    root = tmp_path / "vid" / "train"
    for i in range(2):
        write_video(root / f"{i}.mp4", np.zeros((4, 16, 16), np.uint8))
    (root / "bad.mp4").write_bytes(os.urandom(500))
    skipped = Counter()
    cfg = DataConfig(source="video", path=str(tmp_path / "vid"))
    clips, _ = load_split(cfg, "train", 1, (16, 16), skipped)
    assert len(clips) == 2 and skipped == Counter({"video": 1})


# ---- weights -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    data = make_idx_folder(tmp / "idx")
    cfg = load_config(PRESET, [*tiny_model_overrides(tmp / "run"), "data.source=idx",
                               f"data.path={data}", "train.batch_size=8", "train.max_steps=1",
                               "eval.knn=false"])  # fmt: skip
    return pretrain(cfg).checkpoint, data


def damaged_copy(tmp_path, checkpoint, change):
    import shutil

    from safetensors.torch import load_file

    out = tmp_path / "ck"
    shutil.copytree(checkpoint, out)
    weights = load_file(out / "model.safetensors")
    change(weights)
    save_file(weights, out / "model.safetensors")
    return out


def set_nan(weights):
    key = next(k for k in weights if k.endswith("weight"))
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = float("nan")


def set_int(weights):
    key = next(k for k in weights if k.endswith("weight"))
    weights[key] = weights[key].round().to(torch.int64)


@pytest.mark.parametrize("change", [set_nan, set_int], ids=["nan", "integer"])
@pytest.mark.parametrize("command", ["knn", "export", "import", "prune"])
def test_nan_or_integer_weights_are_refused_by_every_command(
    tmp_path, capsys, trained, change, command
):
    checkpoint, data = trained
    bad = damaged_copy(tmp_path, checkpoint, change)
    argv = {
        "knn": ["eval", "knn", bad, "--data", data, "--source", "idx", "--no-cache"],
        "export": ["export", bad, "--to", "safetensors", tmp_path / "out"],
        "import": ["import", bad, tmp_path / "out"],
        "prune": ["prune", bad, tmp_path / "out", "--keep", "1"],
    }[command]
    one_line_error(capsys, argv, bad)
    assert not (tmp_path / "out").exists()


def test_random_bytes_as_weights_are_one_line(tmp_path, capsys, trained):
    checkpoint, data = trained
    bad = damaged_copy(tmp_path, checkpoint, lambda w: None)
    (bad / "model.safetensors").write_bytes(os.urandom(1000))
    argv = ["eval", "knn", bad, "--data", data, "--source", "idx", "--no-cache"]
    one_line_error(capsys, argv, "model.safetensors")


def test_a_head_count_override_replaces_the_assumed_one_in_notes_and_source_json(tmp_path):
    from conftest import tiny_model_config
    from interop_helpers import randomise_

    from mimkit.interop.convert import import_checkpoint
    from mimkit.interop.timm import mimkit_to_timm
    from mimkit.models.config import resolve_model_config
    from mimkit.models.vit import VisionTransformer
    from mimkit.train.checkpoint import load_model

    # width 192 is vit_tiny's (3 heads); this encoder has 4
    cfg = resolve_model_config(tiny_model_config(embed_dim=192, num_heads=4))
    encoder = randomise_(VisionTransformer(cfg))
    save_file(mimkit_to_timm(encoder.state_dict()), tmp_path / "vit.safetensors")
    result = import_checkpoint(
        tmp_path / "vit.safetensors", tmp_path / "ours", overrides=["model.num_heads=4"]
    )
    assert not any("heads assumed" in n for n in result.notes)
    source = json.loads((tmp_path / "ours" / "source.json").read_text())
    assert (
        source["assumptions"] == result.notes
        and "4 heads from the model.num_heads override" in result.notes
    )
    back, _ = load_model(tmp_path / "ours")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.encoder(images), encoder(images), atol=0, rtol=0)
