"""Sources for clips, volumes, multi-band tiles and spectrograms, made here in tmp folders."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import needs_fmnist

from mimkit.data.arrays import band_stats, normalize_intensity, read_array
from mimkit.data.config import DataConfig
from mimkit.data.sources import load_split
from mimkit.data.synthetic import make_spectrograms, make_tiles, make_volumes, moving_clip
from mimkit.data.transforms import augment_clips, center_crop_leading, random_crop_leading
from mimkit.errors import DataError


def write_clips(root, count=4, frames=6, size=16, classes=2):
    from mimkit.data.video import write_video

    rng = np.random.default_rng(0)
    item = np.full((6, 6), 255, np.uint8)
    for n in range(count):
        clip = moving_clip(item, frames, size, rng)
        write_video(root / "train" / f"c{n % classes}" / f"clip_{n}.mp4", clip)
    return root


def test_moving_clip_moves_and_stays_on_the_canvas():
    clip = moving_clip(np.full((4, 4), 200, np.uint8), 10, 16, np.random.default_rng(0))
    assert clip.shape == (10, 16, 16)
    assert all(frame.sum() == 16 * 200 for frame in clip)  # the whole item, every frame
    assert not np.array_equal(clip[0], clip[-1])


def test_video_folder_decodes_clips_and_skips_corrupt_files(tmp_path):
    pytest.importorskip("av")
    write_clips(tmp_path)
    (tmp_path / "train" / "c0" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    good = next((tmp_path / "train" / "c1").glob("*.mp4")).read_bytes()
    (tmp_path / "train" / "c1" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    from mimkit.data.video import load_video_folder

    clips, labels, skipped = load_video_folder(tmp_path / "train", 1, (16, 16), progress=False)
    assert skipped == 2
    assert clips.shape == (4, 1, 6, 16, 16) and clips.dtype == torch.uint8
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    # lossy H.264, but the bright item is where it was drawn
    expected = moving_clip(np.full((6, 6), 255, np.uint8), 6, 16, np.random.default_rng(0))
    assert np.abs(clips[0, 0].float().numpy() - expected).mean() < 8


def test_video_source_stride_and_max_frames(tmp_path):
    pytest.importorskip("av")
    write_clips(tmp_path, count=2, frames=8)
    cfg = DataConfig(source="video", path=str(tmp_path), frame_stride=2, max_frames=3)
    clips, labels = load_split(cfg, "train", 1, (16, 16))
    assert clips.shape == (2, 1, 3, 16, 16)
    with pytest.raises(DataError, match="none of"):
        load_split(cfg, "train", 1, (32, 32))  # frames of another size are skipped


def test_clip_augmentation_crops_in_time_and_keeps_one_crop_per_clip():
    clips = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(3, 2, 10, 8, 8).contiguous()
    gen = torch.Generator().manual_seed(0)
    window = random_crop_leading(clips, 4, gen)
    assert window.shape == (3, 2, 4, 8, 8)
    values = window[:, 0, :, 0, 0]
    assert torch.equal(values - values[:, :1], torch.arange(4.0).expand(3, 4))  # contiguous
    assert torch.equal(center_crop_leading(clips, 4)[0, 0, :, 0, 0], torch.arange(3.0, 7.0))
    still = torch.rand(2, 1, 1, 16, 16).expand(2, 1, 6, 16, 16)  # the same frame six times
    out = augment_clips(still, (4, 8, 8), generator=gen)
    assert out.shape == (2, 1, 4, 8, 8)
    assert torch.allclose(out, out[:, :, :1].expand_as(out))  # one spatial crop for all frames


def test_volume_source_normalises_each_volume_to_uint8(tmp_path):
    make_volumes(tmp_path, train=6, test=3, shape=(8, 16, 16), progress=False)
    cfg = DataConfig(source="volume", path=str(tmp_path))
    vols, labels = load_split(cfg, "train", 1, (16, 16))
    assert vols.shape == (6, 1, 8, 16, 16) and vols.dtype == torch.uint8
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    for v in vols:  # each volume spans the range whatever its scanner scale/offset
        assert v.min() == 0 and v.max() == 255
    raw = read_array(next((tmp_path / "train" / "0").glob("*.npy")))
    assert raw.min() < -100  # the files really hold scanner-like units


def test_intensity_normalisation_ignores_outliers():
    vol = np.zeros((4, 8, 8), np.float32)
    vol[0, 0, 0] = 1e6  # one hot pixel must not flatten the rest
    vol[1] = 10.0
    out = normalize_intensity(vol)
    assert out[1].min() == 255 and out[0, 0, 0] == 255 and out[2].max() == 0


@pytest.mark.parametrize("fmt", ["npy", "tif"])
def test_multiband_tiles_any_band_count(tmp_path, fmt):
    if fmt == "tif":
        pytest.importorskip("tifffile")
    make_tiles(tmp_path, train=6, test=3, bands=5, size=16, fmt=fmt, progress=False)
    cfg = DataConfig(source="multiband", path=str(tmp_path))
    tiles, labels = load_split(cfg, "train", 5, (16, 16))
    assert tiles.shape == (6, 5, 16, 16) and tiles.dtype == torch.float32
    assert tiles.mean() > 255  # uint16 values are kept, not squashed to uint8
    with pytest.raises(DataError, match="none of"):
        load_split(cfg, "train", 4, (16, 16))  # wrong band count: every file refused


def test_band_stats_standardise_each_band(tmp_path):
    make_tiles(tmp_path, train=6, test=3, bands=4, size=16, progress=False)
    tiles, _ = load_split(DataConfig(source="multiband", path=str(tmp_path)), "train", 4, (16, 16))
    mean, std = band_stats(tiles)
    assert len(mean) == 4 and mean[0] < mean[3]  # bands have their own offsets
    from mimkit.data.transforms import normalize

    x = normalize(tiles, mean, std)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)


def test_spectrograms_non_square(tmp_path):
    make_spectrograms(tmp_path, train=6, test=3, mels=32, frames=128, progress=False)
    specs, _ = load_split(
        DataConfig(source="spectrogram", path=str(tmp_path)), "test", 1, (32, 128)
    )
    assert specs.shape == (3, 1, 32, 128)


def test_data_stats_cli_writes_config(tmp_path):
    from mimkit.cli import main

    make_tiles(tmp_path / "tiles", train=4, test=2, bands=3, size=16, progress=False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"in_chans": 3}, "data": {"source": "multiband"}}))
    rc = main(
        [
            "data",
            "stats",
            str(tmp_path / "tiles"),
            "--source",
            "multiband",
            "--channels",
            "3",
            "--size",
            "16",
            "16",
            "--config",
            str(cfg),
        ]
    )
    assert rc == 0
    data = yaml.safe_load(cfg.read_text())["data"]
    assert len(data["mean"]) == 3 and data["source"] == "multiband"
    assert (
        main(
            [
                "data",
                "stats",
                str(tmp_path / "nowhere"),
                "--source",
                "multiband",
                "--channels",
                "3",
                "--size",
                "16",
                "16",
            ]
        )
        == 2
    )


@needs_fmnist
def test_moving_fmnist_generator_writes_labelled_videos(tmp_path):
    pytest.importorskip("av")
    from mimkit.data.synthetic import make_moving_fmnist

    make_moving_fmnist(tmp_path, train=4, test=2, frames=6, size=32, progress=False)
    clips, labels = load_split(DataConfig(source="video", path=str(tmp_path)), "test", 1, (32, 32))
    assert clips.shape == (2, 1, 6, 32, 32)
    assert ((labels >= 0) & (labels < 10)).all()
    assert json.dumps(labels.tolist())


def test_nifti_volumes_through_nibabel(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    vol = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)  # (x, y, z)
    for i, name in enumerate(("a.nii", "b.nii.gz")):
        path = tmp_path / "train" / "c0" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(vol + i, np.eye(4)), str(path))
    (tmp_path / "train" / "c0" / "notes.txt.gz").write_bytes(b"not a volume")
    assert np.array_equal(read_array(tmp_path / "train" / "c0" / "a.nii"), vol.transpose(2, 1, 0))
    vols, labels = load_split(DataConfig(source="volume", path=str(tmp_path)), "train", 1, (12, 16))
    assert vols.shape == (2, 1, 8, 12, 16) and labels.tolist() == [0, 0]
