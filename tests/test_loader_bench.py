"""`mimkit bench --loader`: JPEG folder, packed shards and in-memory data, timed per CPU core."""

import json

import pytest

from mimkit.bench.loader import FEED_TARGET, PATHS, bench_loader, cpu_seconds, make_jpeg_folder
from mimkit.cli.main import main
from mimkit.config import load_config
from mimkit.errors import ConfigError

pytest.importorskip("webdataset")


def test_the_loader_bench_writes_per_core_rates_and_the_cores_to_feed_a_target(tmp_path, capsys):
    args = ["bench", "--loader", "--img-size", "32", "--jpeg-size", "40", "--pipeline-items", "24",
            "--batch", "8", "--rounds", "2", "--workers", "0", "--work-dir", str(tmp_path / "w"),
            "--out", str(tmp_path / "loader.json")]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "loader.json").read_text())
    assert record["image_hw"] == [32, 32] and record["items"] == 24
    assert record["wall_s"] >= record["prepare_s"] > 0
    assert record["command"].startswith("mimkit bench") and "--loader" in record["command"]
    assert "--steps" not in record["command"]  # the training step's settings do not apply
    assert {"cpu", "cores", "load_avg_before", "load_avg_after"} <= set(record["machine"])
    assert list(record["paths"]) == list(PATHS)
    for path in record["paths"].values():
        assert path["rounds"] == 2 and path["images_per_round"] == 24  # 3 full batches each round
        assert path["img_per_cpu_s"] > 0 and path["augment_cpu_ms_per_img"] >= 0
        assert path["cores_to_feed_target"] == pytest.approx(
            FEED_TARGET / path["img_per_cpu_s"], abs=0.01
        )
    paths = record["paths"]
    ratio = paths["packed_shards"]["img_per_cpu_s"] / paths["jpeg_folder"]["img_per_cpu_s"]
    assert record["packed_over_jpeg_per_core"] == pytest.approx(ratio, rel=1e-2)
    table = (tmp_path / "loader.md").read_text()
    assert f"| packed shards | 0 | {paths['packed_shards']['img_per_cpu_s']} |" in table
    assert record["machine"]["cpu"] in table and "--loader" in table
    # the JPEGs and the pack are kept for another run, named by what they hold
    made = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert made == ["jpeg_40px_24_seed0", "pack_32x32_of_jpeg_40px_24_seed0"]


def test_cpu_seconds_count_finished_child_processes():
    import subprocess
    import sys

    before = cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert cpu_seconds() - before > 0.05


def test_jpeg_folder_is_seeded_and_the_bench_refuses_bad_settings(tmp_path):
    a = make_jpeg_folder(tmp_path / "a", 5, 24, seed=3)
    b = make_jpeg_folder(tmp_path / "b", 5, 24, seed=3)
    files = sorted((a / "0").iterdir())
    assert [f.name for f in files] == [f"{i:07d}.jpg" for i in range(5)]
    assert all(f.read_bytes() == (b / "0" / f.name).read_bytes() for f in files)
    cfg = load_config(None, ["model.preset=vit_tiny", "model.img_size=32", "model.in_chans=1"])
    with pytest.raises(ConfigError, match="reads RGB JPEGs; model.in_chans is 1"):
        bench_loader(cfg, tmp_path, device=None, items=8, batch=4)
    with pytest.raises(ConfigError, match="--pipeline-items >= --batch"):
        bench_loader(cfg, tmp_path, device=None, items=2, batch=4)
