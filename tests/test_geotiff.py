"""GeoTIFF as a data source (issue 16): bands by index or name, nodata out of stats and loss."""

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile")

import mimkit  # noqa: E402
from mimkit.cli import main  # noqa: E402
from mimkit.config import load_config  # noqa: E402
from mimkit.data.config import DataConfig  # noqa: E402
from mimkit.data.info import data_stats  # noqa: E402
from mimkit.data.sources import load_split  # noqa: E402
from mimkit.errors import DataError  # noqa: E402
from mimkit.eval.features import extract_features  # noqa: E402
from mimkit.masking import mask_from_noise  # noqa: E402
from mimkit.objectives.mae import build_mae  # noqa: E402
from mimkit.objectives.targets import masked_mse  # noqa: E402
from mimkit.train.loop import without_nodata  # noqa: E402

NAMES = ["B02", "B03", "B04", "B08"]


def gdal_metadata(names):
    items = "".join(
        f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
        for i, n in enumerate(names)
    )
    return f"<GDALMetadata>{items}</GDALMetadata>"


def write_geotiff(path, bands, nodata=None, names=NAMES, planar=True):
    """(C, H, W) bands as a GeoTIFF: GDAL's band descriptions and nodata tags, a geo-reference."""
    tags = [
        (33550, "d", 3, (10.0, 10.0, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0), True),  # ModelTiepoint
    ]
    if names:
        tags.append((42112, "s", 0, gdal_metadata(names), True))
    if nodata is not None:
        tags.append((42113, "s", 0, str(nodata), True))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = bands if planar else np.moveaxis(bands, 0, -1)
    tifffile.imwrite(path, data, planarconfig="separate" if planar else "contig",
                     photometric="minisblack", extratags=tags)  # fmt: skip
    return path


def tile(seed=0, side=16, bands=4):
    rng = np.random.default_rng(seed)
    return (rng.random((bands, side, side)) * 1000).astype(np.float32)


def test_bands_by_index_or_name_planar_or_contiguous(tmp_path):
    t = tile()
    write_geotiff(tmp_path / "a" / "x.tif", t)
    write_geotiff(tmp_path / "b" / "x.tif", t, planar=False)
    for folder in ("a", "b"):
        by_name, _ = load_split(DataConfig(source="geotiff", path=str(tmp_path / folder),
                                           bands=["B04", "B03", "B02"]), "train", 3, (16, 16))  # fmt: skip
        assert torch.equal(by_name[0], torch.from_numpy(t[[2, 1, 0]]))
        by_index, _ = load_split(DataConfig(source="geotiff", path=str(tmp_path / folder),
                                            bands=[3]), "train", 1, (16, 16))  # fmt: skip
        assert torch.equal(by_index[0, 0], torch.from_numpy(t[3]))
    everything, _ = load_split(DataConfig(source="geotiff", path=str(tmp_path / "a")), "train", 4, (16, 16))
    assert torch.equal(everything[0], torch.from_numpy(t))
    # names in a config: a mixed list of indices and names is read as such
    cfg = load_config(None, ["data.source=geotiff", "data.bands=[B08, 0]", "model.in_chans=2"])
    assert cfg.data.bands == ["B08", 0]


def test_nodata_is_left_out_of_the_statistics(tmp_path):
    t = tile(bands=2)
    t[:, :4] = -9999  # a strip outside the swath
    t[1, 10, 10] = -9999
    write_geotiff(tmp_path / "d" / "x.tif", t, nodata=-9999, names=["red", "nir"])
    write_geotiff(tmp_path / "d" / "y.tif", tile(1, bands=2), nodata=-9999, names=["red", "nir"])
    stats = data_stats(DataConfig(source="geotiff", path=str(tmp_path / "d")), 2, (16, 16))
    values = np.stack([t, tile(1, bands=2)]).transpose(1, 0, 2, 3).reshape(2, -1) / 255.0
    for band in range(2):
        valid = values[band][values[band] != -9999 / 255.0]
        assert stats["mean"][band] == pytest.approx(valid.mean(), rel=1e-5)
        assert stats["std"][band] == pytest.approx(valid.std(ddof=1), rel=1e-5)
    # the setting names another nodata value than the file's
    items, _ = load_split(DataConfig(source="geotiff", path=str(tmp_path / "d"), nodata=-9999.0),
                          "train", 2, (16, 16))  # fmt: skip
    assert int(torch.isnan(items[0]).sum()) == 2 * 4 * 16 + 1


def test_patches_touching_nodata_are_left_out_of_the_loss():
    torch.manual_seed(0)
    model = build_mae(
        mimkit.config.ModelConfig(img_size=16, in_chans=2, patch_size=4, embed_dim=32, depth=1,
                                  num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                                  decoder_num_heads=2)  # fmt: skip
    )
    x = torch.randn(2, 2, 16, 16)
    x[0, 1, 0, 0] = float("nan")  # touches patch 0 of sample 0
    x[1, :, 4:8, 12:16] = float("nan")  # all of patch 7 of sample 1
    hidden = torch.zeros(2, 16)
    hidden[:, [0, 5, 7, 9]] = 1  # those patches hidden, among others
    mask = mask_from_noise(hidden + torch.rand(2, 16) * 0.1, 0.75)
    filled, weighted = without_nodata(x, mask, (4, 4))
    assert torch.isfinite(filled).all() and filled[0, 1, 0, 0] == 0
    assert weighted.loss_weight[0, 0] == 0 and weighted.loss_weight[1, 7] == 0
    assert weighted.loss_weight.sum() == 30
    out = model(filled, mask=weighted)
    assert torch.isfinite(out.loss)
    # what the target holds in a left-out patch does not change the loss
    target = model.target(filled)
    moved = target.clone()
    moved[0, 0] += 100.0
    moved[1, 7] -= 100.0
    same = masked_mse(out.pred, moved, weighted.hidden_weight)
    torch.testing.assert_close(same, masked_mse(out.pred, target, weighted.hidden_weight))
    assert masked_mse(out.pred, moved, mask.binary) > masked_mse(out.pred, target, mask.binary) + 1
    torch.testing.assert_close(out.loss, masked_mse(out.pred.float(), target, weighted.hidden_weight))
    # a batch whose hidden patches are all nodata costs 0, not NaN (NaN would count as a
    # non-finite step and could halt the run)
    assert masked_mse(out.pred, target, torch.zeros(2, 16)) == 0


def test_a_pretraining_run_on_tiles_with_nodata_stays_finite(tmp_path):
    for i in range(4):
        t = tile(i, bands=3)
        t[:, : 3 + i] = -1
        write_geotiff(tmp_path / "tiles" / f"{i}.tif", t, nodata=-1, names=["r", "g", "b"])
    empty = np.full((3, 16, 16), -1, np.float32)
    write_geotiff(tmp_path / "tiles" / "empty.tif", empty, nodata=-1, names=["r", "g", "b"])
    stats = data_stats(DataConfig(source="geotiff", path=str(tmp_path / "tiles")), 3, (16, 16))
    cfg = load_config(None, [
        "data.source=geotiff", f"data.path={tmp_path / 'tiles'}", f"data.mean={stats['mean']}",
        f"data.std={stats['std']}", "model.img_size=16", "model.patch_size=4", "model.in_chans=3",
        "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "train.batch_size=2",
        "train.epochs=2", "train.log_every=1", "train.progress=false", "train.device=cpu",
        "train.compile=false", "eval.reconstruction_images=2", f"out_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    model = mimkit.pretrain(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r.get("event") == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert lines[0]["skipped_items"] == {"nodata": 1}  # the empty tile, counted
    assert all(torch.isfinite(p).all() for p in model.method.parameters())
    tiles = torch.from_numpy(np.stack([tile(9, bands=3), np.full_like(empty, np.nan)]))
    features = extract_features(model.encoder, tiles, cfg.data.mean, cfg.data.std, progress=False)
    assert torch.isfinite(features).all()


def test_bad_tiles_are_one_line_each_and_counted(tmp_path, caplog):
    write_geotiff(tmp_path / "d" / "good.tif", tile(bands=2), nodata=0, names=["a", "b"])
    write_geotiff(tmp_path / "d" / "allnodata.tif", np.zeros((2, 16, 16), np.float32), nodata=0,
                  names=["a", "b"])  # fmt: skip
    onlyband = tile(bands=2)
    onlyband[1] = 0  # band b is nodata everywhere
    write_geotiff(tmp_path / "d" / "deadband.tif", onlyband, nodata=0, names=["a", "b"])
    write_geotiff(tmp_path / "d" / "unnamed.tif", tile(bands=2), names=None)
    (tmp_path / "d" / "broken.tif").write_bytes(b"II*\x00garbage")
    cfg = DataConfig(source="geotiff", path=str(tmp_path / "d"), bands=["a", "b"])
    skipped = Counter()
    with caplog.at_level(logging.WARNING):
        items, _ = load_split(cfg, "train", 2, (16, 16), skipped)
    assert len(items) == 1
    assert skipped == {"nodata": 2, "band": 1, "unreadable": 1}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert any("allnodata.tif: a selected band is nodata (0.0) everywhere" in s for s in lines)
    assert any("unnamed.tif: no band named 'a' (named bands: none)" in s for s in lines)
    zeros = np.zeros((2, 16, 16), np.float32)
    write_geotiff(tmp_path / "only" / "z.tif", zeros, nodata=0, names=["a", "b"])
    with pytest.raises(DataError, match="none of 1 GeoTIFF files could be used"):
        load_split(DataConfig(source="geotiff", path=str(tmp_path / "only")), "train", 2, (16, 16))


def test_data_stats_command_selects_bands_and_leaves_nodata_out(tmp_path, capsys):
    t = tile(bands=4)
    t[:, 0] = -9999
    write_geotiff(tmp_path / "d" / "x.tif", t, nodata=-9999)
    code = main(["data", "stats", str(tmp_path / "d"), "--source", "geotiff", "--bands",
                 "B08,0", "--channels", "2", "--size", "16", "16"])  # fmt: skip
    assert code == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for i, band in enumerate((3, 0)):
        valid = t[band, 1:] / 255.0
        assert stats["mean"][i] == pytest.approx(valid.mean(), rel=1e-5)
