"""Samples with several inputs (`data.source: multi`): the layout, its reader, the generators,
per-input statistics, the loop's batch preparation and the evaluation's feature path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import needs_fmnist
from PIL import Image

from mimkit.cli.main import main
from mimkit.config import load_config
from mimkit.data.config import DataConfig, InputConfig
from mimkit.data.multi import Inputs, load_multi_split, read_offsets, set_inputs_stats
from mimkit.data.multi_synth import (
    FIELD_GROUND,
    compose_field,
    make_fmnist_modal,
    make_fmnist_pairs,
    make_tile_groups,
)
from mimkit.data.scenes import INK
from mimkit.data.sources import TrainSource, load_labelled_splits
from mimkit.errors import ConfigError, DataError
from mimkit.eval.cache import cached_features
from mimkit.eval.features import InputsEncoder, extract_features, feature_encoder, feature_stats
from mimkit.models import ModelConfig, VisionTransformer
from mimkit.train.loop import prepare_batch

VIEWS = {"view1": InputConfig(), "view2": InputConfig()}


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)


def _two_inputs(root: Path, n: int = 6, size: int = 8) -> Path:
    """root/{train,test}/{a,b}/{0,1}/s_K.png, input b = 255 - input a."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(n):
            a = rng.integers(0, 256, (size, size))
            _png(root / split / "a" / f"{k % 2}" / f"s_{k}.png", a)
            _png(root / split / "b" / f"{k % 2}" / f"s_{k}.png", 255 - a)
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    inputs = kw.pop("inputs", {"a": InputConfig(), "b": InputConfig()})
    return DataConfig(source="multi", path=str(root), inputs=inputs, **kw)


def test_reader_pairs_inputs_by_sample_id_and_class(tmp_path):
    root = _two_inputs(tmp_path)
    inputs, labels = load_multi_split(_cfg(root), "train", (8, 8))
    assert isinstance(inputs, Inputs) and set(inputs) == {"a", "b"}
    assert inputs["a"].shape == inputs["b"].shape == (6, 1, 8, 8)
    assert inputs["a"].dtype == torch.uint8
    assert torch.equal(inputs["b"], 255 - inputs["a"])  # the same sample in every input
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    rows = inputs[torch.tensor([4, 1])]  # rows cut from every input at once
    assert isinstance(rows, Inputs) and rows.rows == 2 and len(rows) == 2
    assert torch.equal(rows["a"], inputs["a"][[4, 1]])


def test_missing_and_bad_files_are_counted_skips_naming_the_file(tmp_path, caplog):
    root = _two_inputs(tmp_path)
    (root / "train" / "b" / "0" / "s_2.png").unlink()  # in a, not in b
    _png(root / "train" / "a" / "1" / "s_3.png", np.zeros((9, 8)))  # wrong size
    (root / "train" / "b" / "1" / "s_5.png").write_bytes(b"not a png")
    skipped = __import__("collections").Counter()
    with caplog.at_level(logging.WARNING):
        inputs, labels = load_multi_split(_cfg(root), "train", (8, 8), skipped)
    assert len(labels) == 3 and inputs["a"].shape[0] == 3
    assert skipped == {"missing_input": 1, "size": 1, "undecodable": 1}
    text = caplog.text
    assert "s_2.png" in text and "no file in input(s) b" in text
    assert "s_3.png" in text and "s_5.png" in text
    with pytest.raises(DataError, match="s_2.png.*on_bad_item=fail"):
        load_multi_split(_cfg(root, on_bad_item="fail"), "train", (8, 8))


def test_array_inputs_keep_values_and_check_channels(tmp_path):
    for k in range(3):
        for name, bands in (("opt", 3), ("sar", 2)):
            path = tmp_path / "train" / name / f"{k}" / f"t{k}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.full((bands, 4, 4), 1000 + k, dtype=np.uint16))
    specs = {"opt": InputConfig(channels=3), "sar": InputConfig(channels=2)}
    inputs, labels = load_multi_split(_cfg(tmp_path, inputs=specs), "train", (4, 4))
    assert inputs["opt"].dtype == torch.float32 and inputs["sar"].shape == (3, 2, 4, 4)
    assert inputs["sar"][2].max() == 1002 and labels.tolist() == [0, 1, 2]
    wrong = {"opt": InputConfig(channels=2), "sar": InputConfig(channels=2)}
    with pytest.raises(
        DataError, match=r"t0.npy: array of shape \(3, 4, 4\); expected \(2, H, W\)"
    ):
        load_multi_split(_cfg(tmp_path, inputs=wrong, on_bad_item="fail"), "train", (4, 4))


def _npz_samples(root: Path, n: int = 4) -> Path:
    """root/{train,test}/{0,1}/s_K.npz, each {"opt": (3, 4, 4) uint16, "sar": (4, 4) float32}."""
    for split in ("train", "test"):
        for k in range(n):
            path = root / split / f"{k % 2}" / f"s_{k}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            opt = np.full((3, 4, 4), 1000 + k, dtype=np.uint16)
            np.savez(path, opt=opt, sar=np.full((4, 4), -k, dtype=np.float32))
    return root


NPZ_INPUTS = {"opt": InputConfig(channels=3), "sar": InputConfig(channels=1)}


def test_npz_per_sample_layout_reads_one_array_per_input(tmp_path):
    root = _npz_samples(tmp_path)
    inputs, labels = load_multi_split(_cfg(root, inputs=NPZ_INPUTS), "train", (4, 4))
    assert inputs["opt"].shape == (4, 3, 4, 4) and inputs["sar"].shape == (4, 1, 4, 4)
    assert inputs["opt"].dtype == inputs["sar"].dtype == torch.float32  # values kept
    assert labels.tolist() == [0, 0, 1, 1]  # s_0, s_2 in class 0; s_1, s_3 in class 1
    assert inputs["opt"][1].max() == 1002 and inputs["sar"][1].min() == -2  # same sample
    test, _ = load_multi_split(_cfg(root, inputs=NPZ_INPUTS), "test", (4, 4))
    assert test.rows == 4
    # the whole path a run takes: splits with labels, the training source's batches
    x_train, y_train, x_test, _ = load_labelled_splits(_cfg(root, inputs=NPZ_INPUTS), 3, (4, 4))
    assert set(x_train) == {"opt", "sar"} and len(y_train) == 4 and x_test.rows == 4


def test_npz_bad_samples_are_counted_skips_naming_file_and_key(tmp_path, caplog):
    root = _npz_samples(tmp_path, n=6)
    train = root / "train"
    np.savez(train / "0" / "s_0.npz", opt=np.zeros((3, 4, 4)))  # no sar
    np.savez(train / "1" / "s_1.npz", opt=np.zeros((3, 4, 4)), sar=np.array([["a"] * 4] * 4))
    np.savez(train / "0" / "s_2.npz", opt=np.zeros((2, 3, 4, 4)), sar=np.zeros((4, 4)))
    np.savez(train / "1" / "s_3.npz", opt=np.zeros((3, 4, 4)), sar=np.zeros((5, 4)))
    (train / "0" / "s_4.npz").write_bytes(b"not an archive")
    skipped = __import__("collections").Counter()
    with caplog.at_level(logging.WARNING):
        inputs, labels = load_multi_split(_cfg(root, inputs=NPZ_INPUTS), "train", (4, 4), skipped)
    assert labels.tolist() == [1] and inputs["opt"].shape == (1, 3, 4, 4)  # s_5 only
    assert skipped == {"missing_input": 1, "dtype": 1, "shape": 1, "size": 1, "unreadable": 1}
    text = caplog.text
    assert "s_0.npz: no array for input(s) sar" in text
    assert "s_1.npz: key 'sar': array of type <U1; expected real numbers" in text
    assert "s_2.npz: key 'opt': array of shape (2, 3, 4, 4); expected (3, H, W)" in text
    assert "s_3.npz: key 'sar': 5x4 but model.img_size is 4x4" in text
    assert "s_4.npz: cannot read .npz archive" in text
    with pytest.raises(DataError, match=r"s_0.npz: no array for input\(s\) sar.*on_bad_item"):
        load_multi_split(_cfg(root, inputs=NPZ_INPUTS, on_bad_item="fail"), "train", (4, 4))


def test_npz_object_arrays_are_refused_not_unpickled(tmp_path):
    root = _npz_samples(tmp_path, n=2)
    path = root / "train" / "0" / "s_0.npz"
    np.savez(path, opt=np.zeros((3, 4, 4)), sar=np.array([{"x": 1}] * 16, dtype=object))
    skipped = __import__("collections").Counter()
    inputs, _ = load_multi_split(_cfg(root, inputs=NPZ_INPUTS), "train", (4, 4), skipped)
    assert inputs.rows == 1 and skipped == {"dtype": 1}


def test_split_with_neither_layout_is_one_line(tmp_path):
    (tmp_path / "train" / "0").mkdir(parents=True)
    (tmp_path / "train" / "0" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"train: neither a sub-folder per input \(opt, sar\)"):
        load_multi_split(_cfg(tmp_path, inputs=NPZ_INPUTS), "train", (4, 4))


def test_missing_input_folder_is_one_line(tmp_path):
    root = _two_inputs(tmp_path)
    cfg = _cfg(root, inputs={"a": InputConfig(), "depth": InputConfig()})
    with pytest.raises(DataError, match=r"train/depth: folder of input 'depth' not found"):
        load_multi_split(cfg, "train", (8, 8))


def test_config_section_reads_and_refuses_precisely(tmp_path):
    path = tmp_path / "c.yaml"
    tree = {
        "model": {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "data": {
            "source": "multi",
            "path": str(tmp_path),
            "inputs": {"optical": {"channels": 3, "mean": [0.1, 0.2, 0.3]}, "radar": None},
        },
    }
    path.write_text(yaml.safe_dump(tree))
    cfg = load_config(path)
    assert cfg.data.inputs["optical"].channels == 3
    assert cfg.data.inputs["radar"] == InputConfig()  # `radar:` alone: the defaults
    bad = [
        (["data.inputs.optical.mean=[0.1, 0.2]"], r"data.inputs.optical.mean has 2 values"),
        (["data.inputs.radar.interpolation=cubic"], r"data.inputs.radar.interpolation must be"),
        (["data.inputs.radar.std=[0]"], r"data.inputs.radar.std must be > 0"),
        (["data.inputs.radar.chanels=2"], r"unknown config key 'data.inputs.radar.chanels'"),
        (["data.source=folder"], r"data.inputs names the inputs of data.source: multi"),
        (["data.inputs=[1, 2]"], r"data.inputs: expected a mapping"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_config(path, overrides)


def test_prepare_batch_gives_every_input_the_same_crop_and_its_own_statistics(tmp_path):
    cfg = load_config(None, ["model.img_size=8", "model.patch_size=4", "data.source=multi"]
                      + ["data.inputs={a: {mean: [0.5], std: [0.5]}, "
                         "b: {mean: [0.0], std: [0.25]}, s: {interpolation: nearest}}"])  # fmt: skip
    a = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    seg = torch.randint(0, 5, (4, 1, 8, 8), dtype=torch.uint8)
    batch = Inputs({"a": a, "b": a.clone(), "s": seg})
    gen = torch.Generator().manual_seed(0)
    x = prepare_batch(batch, cfg, torch.device("cpu"), gen)
    assert isinstance(x, Inputs) and x["a"].dtype == torch.float32
    # the same pixels, cropped alike, each standardised with its own mean/std
    torch.testing.assert_close((x["a"] * 0.5 + 0.5), x["b"] * 0.25, atol=1e-5, rtol=0)
    assert set(x["s"].unique().tolist()) <= set(seg.float().div(255).unique().tolist())
    plain = prepare_batch(a, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert plain.shape == a.shape  # the single-tensor path is unchanged


def test_train_source_yields_inputs_batches(tmp_path):
    root = _two_inputs(tmp_path, n=8)
    source = TrainSource(_cfg(root, limit=6), 1, (8, 8), seed=0)
    assert source.num_items == 6
    (batch,) = list(source.batches(0, 4))[:1]
    assert isinstance(batch.images, Inputs) and batch.images["b"].shape == (4, 1, 8, 8)
    assert torch.equal(batch.images["b"], 255 - batch.images["a"])
    x_tr, y_tr, x_te, y_te = load_labelled_splits(_cfg(root), 1, (8, 8), train_limit=5)
    assert x_tr["a"].shape[0] == 5 == len(y_tr) and x_te["b"].shape[0] == len(y_te) == 8


class _ViewOne(torch.nn.Module):
    """A stand-in method that encodes input `a` only."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = VisionTransformer(
            ModelConfig(img_size=8, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
        )

    def encode(self, images):
        return self.encoder.features(images["a"])


def test_features_of_inputs_use_the_method_and_each_inputs_statistics(tmp_path):
    root = _two_inputs(tmp_path)
    data = _cfg(root, inputs={"a": InputConfig(mean=[0.3], std=[0.2]), "b": InputConfig()})
    method = _ViewOne().eval()
    wrapper = feature_encoder(method, data)
    assert (
        isinstance(wrapper, InputsEncoder)
        and feature_encoder(method, DataConfig()) is method.encoder
    )
    inputs, _ = load_multi_split(data, "train", (8, 8))
    mean, std = feature_stats(data)
    feats = extract_features(wrapper, inputs, mean, std, batch_size=4, progress=False)
    alone = extract_features(method.encoder, inputs["a"], [0.3], [0.2], progress=False)
    torch.testing.assert_close(feats, alone)
    cached = cached_features(wrapper, inputs, mean, std, tmp_path / "cache", progress=False)
    again = cached_features(wrapper, inputs, mean, std, tmp_path / "cache", progress=False)
    torch.testing.assert_close(cached, alone)
    torch.testing.assert_close(again, alone)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    with pytest.raises(ConfigError, match="several inputs are the method's own"):
        extract_features(wrapper, inputs, mean, std, block=0, progress=False)


def test_stats_cli_writes_each_inputs_statistics_into_the_config(tmp_path, capsys):
    root = _two_inputs(tmp_path / "d")
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  img_size: 8\n  patch_size: 4\ndata:\n  source: multi  # two inputs\n"
        f"  path: {root}\n  inputs:\n    a:\n      channels: 1\n    b:\n      channels: 1\n"
    )
    assert main(["data", "stats", str(root), "--source", "multi", "--size", "8", "8",
                 "--config", str(config)]) == 0  # fmt: skip
    cfg = load_config(config)
    inputs, _ = load_multi_split(cfg.data, "train", (8, 8))
    for name in ("a", "b"):
        x = inputs[name].float() / 255
        assert cfg.data.inputs[name].mean == pytest.approx([x.mean().item()], abs=1e-5)
        assert cfg.data.inputs[name].std == pytest.approx([x.std().item()], abs=1e-5)
    assert "# two inputs" in config.read_text()
    assert main(["data", "stats", str(root), "--source", "multi", "--size", "8", "8",
                 "--inputs", "a=1"]) == 0  # fmt: skip
    assert '"a"' in capsys.readouterr().out
    assert main(["data", "stats", str(root), "--source", "multi", "--size", "8", "8"]) != 0
    assert "inputs.json: not found" in capsys.readouterr().err


def test_set_inputs_stats_refuses_inline_sections():
    text = "data:\n  source: multi\n  inputs: {a: {}}\n"
    with pytest.raises(DataError, match="data.inputs is written inline"):
        set_inputs_stats(text, {"a": {"mean": [0.1], "std": [0.2]}}, "c.yaml")


@needs_fmnist
def test_pairs_views_overlap_where_their_offsets_say(tmp_path):
    root = make_fmnist_pairs(tmp_path, train=6, test=2, size=16, shift=4, seed=3, progress=False)
    cfg = DataConfig(source="multi", path=str(root), inputs=dict(VIEWS))
    inputs, labels = load_multi_split(cfg, "train", (16, 16))
    offsets = read_offsets(root, "train")
    assert len(offsets) == len(labels) == 6
    for i, (sample, (y1, x1, y2, x2)) in enumerate(sorted(offsets.items())):
        v1, v2 = inputs["view1"][i, 0].float(), inputs["view2"][i, 0].float()
        top, left, h, w = max(y1, y2), max(x1, x2), 16 - abs(y1 - y2), 16 - abs(x1 - x2)
        a = v1[top - y1 : top - y1 + h, left - x1 : left - x1 + w].flatten()
        b = v2[top - y2 : top - y2 + h, left - x2 : left - x2 + w].flatten()
        # the same scene up to each view's own gain and noise
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9, sample
    again = make_fmnist_pairs(tmp_path / "again", train=6, test=2, size=16, shift=4, seed=3,
                              progress=False)  # fmt: skip
    assert read_offsets(again, "train") == offsets  # seeded


@needs_fmnist
def test_modal_scenes_are_aligned(tmp_path):
    root = make_fmnist_modal(tmp_path, train=5, test=2, size=24, seed=1, progress=False)
    specs = {"image": InputConfig(), "depth": InputConfig(), "seg": InputConfig()}
    inputs, labels = load_multi_split(
        DataConfig("multi", str(root), inputs=specs), "test", (24, 24)
    )
    item = inputs["seg"] > 0
    assert item.any() and (inputs["seg"] <= 10).all()
    assert (inputs["image"][item] >= INK).all()  # item pixels are ink in the image
    assert inputs["depth"][item].float().mean() < inputs["depth"][~item].float().mean()  # nearer
    names = sorted(p.name for p in (root / "test" / "seg").iterdir())  # the class folders
    for i, label in enumerate(labels.tolist()):  # the class covering most pixels
        counts = torch.bincount(inputs["seg"][i].flatten().long(), minlength=11)[1:]
        assert counts.argmax().item() == int(names[label])


def _toy_pools() -> list[np.ndarray]:
    """Ten classes of one 28x28 item each, the class's value in a filled square (ink)."""
    pools = []
    for cls in range(10):
        item = np.zeros((1, 28, 28), dtype=np.uint8)
        item[0, 2:26, 2:26] = 100 + 10 * cls
        pools.append(item)
    return pools


def _field_stats(size: int, scenes: int) -> dict[str, float]:
    """Averages over `scenes` field scenes of side `size`: the share of item pixels in all, in
    the outer 3-pixel ring and inside it, and the share of pixels whose label differs from the
    right neighbour's (item edges per pixel: constant if items keep their size in pixels)."""
    rng = np.random.default_rng(0)
    ring = np.zeros((size, size), dtype=bool)
    ring[:3], ring[-3:], ring[:, :3], ring[:, -3:] = True, True, True, True
    stats: dict[str, list[float]] = {"cover": [], "ring": [], "inner": [], "edges": []}
    for _ in range(scenes):
        _, depth, seg = compose_field(_toy_pools(), 4, size, rng)
        item = seg > 0
        assert (depth[~item] == FIELD_GROUND).all()  # a flat ground: no ramp by row
        stats["cover"].append(item.mean())
        stats["ring"].append(item[ring].mean())
        stats["inner"].append(item[~ring].mean())
        stats["edges"].append((seg[:, 1:] != seg[:, :-1]).mean())
    return {name: float(np.mean(values)) for name, values in stats.items()}


def test_field_scenes_do_not_depend_on_absolute_position():
    """`layout="field"`, what CROMA's size-extrapolation check needs: items cover the border
    as often as the middle (they may hang over it), and a scene twice the side has the same
    item density and the same edges per pixel (items keep their size in pixels and their
    count grows with the area; scaled items would halve the edges, a fixed count would
    quarter the density)."""
    at32, at64 = _field_stats(32, 300), _field_stats(64, 100)
    for stats in (at32, at64):
        assert abs(stats["ring"] - stats["inner"]) < 0.2 * stats["inner"], stats
    assert abs(at64["cover"] - at32["cover"]) < 0.15 * at32["cover"], (at32, at64)
    assert abs(at64["edges"] - at32["edges"]) < 0.15 * at32["edges"], (at32, at64)


@needs_fmnist
def test_field_scenes_label_the_majority_class(tmp_path):
    root = make_fmnist_modal(tmp_path, train=2, test=40, size=32, seed=0, progress=False,
                             layout="field")  # fmt: skip
    specs = {"seg": InputConfig(interpolation="nearest")}
    inputs, labels = load_multi_split(
        DataConfig("multi", str(root), inputs=specs), "test", (32, 32)
    )
    names = [int(p.name) for p in sorted((root / "test" / "seg").iterdir())]
    agree = 0
    for seg, label in zip(inputs["seg"][:, 0], labels.tolist(), strict=True):
        counts = torch.bincount(seg.flatten().long(), minlength=11)[1:]
        agree += int(counts.argmax().item() == names[label])
    assert agree >= 0.6 * len(labels), agree  # most pixels show the scene's class
    with pytest.raises(ConfigError, match="--layout"):
        make_fmnist_modal(tmp_path / "x", train=1, test=1, layout="grid", progress=False)


def test_tile_groups_split_the_bands(tmp_path):
    root = make_tile_groups(tmp_path, train=3, test=3, bands=5, optical=2, size=8, progress=False)
    specs = {"optical": InputConfig(channels=2), "radar": InputConfig(channels=3)}
    inputs, labels = load_multi_split(DataConfig("multi", str(root), inputs=specs), "train", (8, 8))
    assert inputs["optical"].shape == (3, 2, 8, 8) and inputs["radar"].shape == (3, 3, 8, 8)
    assert labels.tolist() == [0, 1, 2]
    band_means = torch.cat([inputs["optical"], inputs["radar"]], 1).mean(dim=(0, 2, 3))
    assert (band_means.diff() > 0).all()  # the band offsets rise with the band index


def _stripe_orientation(group: np.ndarray) -> int:
    """0 when a group's spectral power lies mostly where kx and ky share a sign (stripes along
    x + y), 1 where they do not (x - y): an oracle independent of the generator's code."""
    power = (np.abs(np.fft.fft2(group - group.mean(axis=(1, 2), keepdims=True))) ** 2).sum(0)
    k = np.fft.fftfreq(group.shape[-1])
    ky, kx = np.meshgrid(k, k, indexing="ij")
    return 0 if power[ky * kx > 0].sum() > power[ky * kx < 0].sum() else 1


def test_joint_tile_groups_need_both_groups(tmp_path):
    """`--joint`: the class is 2 * optical's stripe orientation + radar's, so each group alone
    tells only one bit of the two; and the class means are flat (no fixed pixel tells it)."""
    root = make_tile_groups(tmp_path, train=24, test=4, size=32, joint=True, progress=False)
    specs = {"optical": InputConfig(channels=3), "radar": InputConfig(channels=3)}
    inputs, labels = load_multi_split(
        DataConfig("multi", str(root), inputs=specs), "train", (32, 32)
    )
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]
    optical, radar = inputs["optical"].double().numpy(), inputs["radar"].double().numpy()
    for i, label in enumerate(labels.tolist()):
        assert _stripe_orientation(optical[i]) == label // 2
        assert _stripe_orientation(radar[i]) == label % 2
    both = np.concatenate([optical, radar], 1)
    class_means = np.stack([both[labels.numpy() == c].mean(0) for c in range(4)])
    spread = class_means.std(0).mean() / both.std(0).mean()
    assert spread < 0.5, spread  # the patterns' random phases average out


def test_joint_tiles_noise_is_the_std_asked_for_and_the_rest_stays():
    """`--noise`: the same seed gives the same stripes, windows and gains; only the noise's
    scale changes (difference between two levels: std = their difference)."""
    from mimkit.data.multi_synth import joint_tile

    quiet = joint_tile(2, 6, 3, 32, np.random.default_rng(5), noise=0.0).astype(float)
    loud = joint_tile(2, 6, 3, 32, np.random.default_rng(5), noise=40.0).astype(float)
    assert abs((loud - quiet).std() - 40.0) < 2.0
    assert _stripe_orientation(quiet[:3]) == 1 and _stripe_orientation(quiet[3:]) == 0
    with pytest.raises(ConfigError, match="--noise must be in"):
        make_tile_groups(Path("unused"), train=1, test=1, joint=True, noise=-1, progress=False)
