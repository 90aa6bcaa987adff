"""DICOM as a data source (issue 16): rescale, window, photometry, frames, and bad files."""

import logging

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import convert_color_space  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from mimkit.config import load_config  # noqa: E402
from mimkit.data.config import DataConfig  # noqa: E402
from mimkit.data.dicom import apply_window, read_dicom  # noqa: E402
from mimkit.data.sources import load_split  # noqa: E402
from mimkit.errors import DataError  # noqa: E402


def write_dicom(path, pixels, photometric="MONOCHROME2", frames=1, syntax=ExplicitVRLittleEndian,
                pixel_data=None, **tags):  # fmt: skip
    """A minimal secondary-capture file; `pixels` (F, H, W) or (F, H, W, 3) as stored."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixel_data is not False:
        ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(frames=1, h=8, w=8, dtype=np.uint16, scale=10):
    values = np.arange(frames * h * w).reshape(frames, h, w) * scale
    return values.astype(dtype)


def test_rescale_then_the_files_window_then_monochrome1_inverted(tmp_path):
    stored = ramp()  # 0..630
    ct = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024,
                     WindowCenter=-400, WindowWidth=600)  # fmt: skip
    hu = stored[0].astype(np.float32) * 2 - 1024
    expected = apply_window(hu, -400, 600)
    got = read_dicom(ct)
    assert got.shape == (1, 1, 8, 8) and got.dtype == np.uint8
    assert np.array_equal(got[0, 0], expected)
    assert got.min() == 0 and got.max() == 255  # the window clips both ends of this ramp
    # the setting's window wins over the file's
    assert np.array_equal(read_dicom(ct, [-1024, 2])[0, 0], apply_window(hu, -1024, 2))
    mono1 = write_dicom(tmp_path / "cr.dcm", stored, "MONOCHROME1", WindowCenter=300, WindowWidth=400)
    expected = 255 - apply_window(stored[0].astype(float), 300, 400)
    assert np.array_equal(read_dicom(mono1)[0, 0], expected)


def test_no_window_uses_the_value_range_and_the_window_formula_is_dicoms():
    values = np.array([0.0, 50.0, 100.0, 150.0])
    # PS3.3 C.11.2.1.2.1: c=50, w=101: ((x - 49.5) / 100 + 0.5) * 255, clipped above 99.5
    assert list(apply_window(values, 50, 101)) == [1, 129, 255, 255]
    assert list(apply_window(values, 75, 1)) == [0, 0, 255, 255]  # width 1: a threshold


def test_signed_pixels_without_a_window_span_their_range(tmp_path):
    stored = (ramp(dtype=np.int16) - 300).astype(np.int16)
    got = read_dicom(write_dicom(tmp_path / "s.dcm", stored))
    assert got[0, 0].min() == 0 and got[0, 0].max() == 255
    assert got[0, 0, 0, 0] == 0 and (np.diff(got[0, 0].ravel().astype(int)) >= 0).all()


def test_rgb_and_ultrasound_ybr_full_read_as_rgb(tmp_path):
    rgb = np.zeros((1, 4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 30, 90
    got = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert got.shape == (1, 3, 4, 6) and list(got[0, :, 0, 0]) == [200, 30, 90]
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    back = read_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert np.abs(back.astype(int) - got.astype(int)).max() <= 2


def test_ybr_full_422_as_ultrasound_stores_it(tmp_path):
    """4:2:2 uncompressed: each pixel pair stored as Y Y Cb Cr."""
    rgb = np.zeros((2, 4, 6, 3), np.uint8)
    rgb[0, ..., :] = (180, 60, 40)
    rgb[1, ..., :] = (20, 140, 220)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.uint8)
    pairs = ybr.reshape(2, 4, 3, 2, 3)  # (F, H, W/2, 2, YBR)
    packed = np.concatenate(
        [pairs[..., 0, 0:1], pairs[..., 1, 0:1], pairs[..., 0, 1:2], pairs[..., 0, 2:3]], axis=-1
    )
    path = write_dicom(tmp_path / "us.dcm", rgb, "YBR_FULL_422", frames=2,
                       pixel_data=packed.tobytes())  # fmt: skip
    got = read_dicom(path)
    assert got.shape == (2, 3, 4, 6)
    assert np.abs(got.transpose(0, 2, 3, 1).astype(int) - rgb.astype(int)).max() <= 2


def test_multi_frame_as_images_or_as_one_volume(tmp_path):
    write_dicom(tmp_path / "data" / "a" / "cine.dcm", ramp(frames=3), frames=3)
    write_dicom(tmp_path / "data" / "b" / "one.dcm", ramp(frames=1))
    images, labels = load_split(DataConfig(source="dicom", path=str(tmp_path / "data")),
                                "train", 1, (8, 8))  # fmt: skip
    assert images.shape == (4, 1, 8, 8) and labels.tolist() == [0, 0, 0, 1]
    write_dicom(tmp_path / "vol" / "v1.dcm", ramp(frames=5), frames=5)
    write_dicom(tmp_path / "vol" / "v2.dcm", ramp(frames=4), frames=4)
    volumes, _ = load_split(DataConfig(source="dicom_volume", path=str(tmp_path / "vol")),
                            "train", 1, (8, 8))  # fmt: skip
    assert volumes.shape == (2, 1, 4, 8, 8) and volumes.dtype == torch.uint8
    # grey files on an RGB model repeat their one channel
    rgb, _ = load_split(DataConfig(source="dicom", path=str(tmp_path / "data")), "train", 3, (8, 8))
    assert rgb.shape == (4, 3, 8, 8) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_bad_files_are_one_line_each_and_counted(tmp_path, caplog):
    good = write_dicom(tmp_path / "d" / "good.dcm", ramp())
    write_dicom(tmp_path / "d" / "nopixels.dcm", ramp(), pixel_data=False)
    write_dicom(tmp_path / "d" / "jpegls.dcm", ramp(dtype=np.uint8, scale=1), syntax=JPEGLSLossless,
                pixel_data=encapsulate([b"\xff\xd8\xff\xf7not really jpeg-ls\xff\xd9"]))  # fmt: skip
    (tmp_path / "d" / "junk.dcm").write_bytes(b"not a dicom file at all")
    write_dicom(tmp_path / "d" / "pal.dcm", ramp(dtype=np.uint8, scale=1), "PALETTE COLOR")
    cfg = DataConfig(source="dicom", path=str(tmp_path / "d"))
    skipped = __import__("collections").Counter()
    with caplog.at_level(logging.WARNING):
        images, _ = load_split(cfg, "train", 1, (8, 8), skipped)
    assert len(images) == 1 and torch.equal(images[0], torch.from_numpy(read_dicom(good)[0]))
    assert skipped == {"no_pixels": 1, "transfer_syntax": 1, "unreadable": 1, "photometric": 1}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert any("jpegls.dcm: transfer syntax JPEG-LS Lossless" in line for line in lines)
    assert any("nopixels.dcm: no pixel data" in line for line in lines)
    cfg.on_bad_item = "fail"
    with pytest.raises(DataError, match=r"\.dcm: .*data.on_bad_item=fail"):
        load_split(cfg, "train", 1, (8, 8))


def test_a_folder_of_only_bad_files_and_bad_windows_are_refused_in_one_line(tmp_path):
    write_dicom(tmp_path / "d" / "nopixels.dcm", ramp(), pixel_data=False)
    with pytest.raises(DataError, match="none of 1 DICOM files could be used"):
        load_split(DataConfig(source="dicom", path=str(tmp_path / "d")), "train", 1, (8, 8))
    with pytest.raises(Exception, match=r"data.dicom_window must be \[centre, width\]"):
        load_config(None, ["data.source=dicom", "data.dicom_window=[40, 0]", "model.img_size=8",
                           "model.patch_size=4", "model.in_chans=1", "data.mean=[0.5]",
                           "data.std=[0.2]"])  # fmt: skip
