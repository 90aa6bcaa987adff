"""`mimkit data info` reads every folder `mimkit data synth` writes."""

import pytest
from conftest import needs_fmnist

from mimkit.cli import main


@pytest.mark.parametrize(
    ("kind", "extra", "shape"),
    [
        ("volumes", [], "(16, 32, 32) float32"),
        ("tiles", [], "(6, 64, 64) uint16"),
        ("spectrograms", [], "(1, 32, 128) float32"),
        ("tiles", ["--format", "tif"], "(6, 64, 64) uint16"),
    ],
)
def test_data_info_reads_synthetic_array_folders(tmp_path, capsys, kind, extra, shape):
    if "tif" in extra:
        pytest.importorskip("tifffile")
    out = tmp_path / kind
    assert main(["data", "synth", kind, str(out), "--train", "4", "--test", "2", *extra]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'train'}: 4 arrays" in printed and f"{out / 'test'}: 2 arrays" in printed
    assert f"shapes (dtype): {shape} x4" in printed
    assert "unreadable (would be skipped): 0" in printed


@needs_fmnist
def test_data_info_reads_synthetic_videos(tmp_path, capsys):
    pytest.importorskip("av")
    out = tmp_path / "clips"
    args = ["data", "synth", "moving-fmnist", str(out), "--train", "2", "--test", "1"]
    assert main([*args, "--frames", "4", "--size", "32"]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'train'}: 2 videos" in printed and "clips: 4 frames 32x32 x2" in printed
