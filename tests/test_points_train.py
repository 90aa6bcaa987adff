"""Point-MAE and Point-CMAE presets train through the one loop and CLI, reload and evaluate."""

import json

import numpy as np
import pytest
import torch
from test_points import one_thread  # noqa: F401 - the autouse fixture: one thread

from mimkit.cli import main
from mimkit.data.shapes import make_shapes
from mimkit.objectives.point_cmae import PointCMAE
from mimkit.objectives.point_mae import PointMAE
from mimkit.train.checkpoint import load_model

TINY = [
    "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
    "model.decoder_depth=1", "model.decoder_num_heads=2", "method.groups=8",
    "method.group_size=8", "method.tokenizer_width=8", "data.points=64", "train.batch_size=6",
    "train.epochs=1", "train.max_steps=2", "train.progress=false",
]  # fmt: skip


@pytest.mark.parametrize(
    "preset, kind",
    [
        ("configs/shapes_point_mae_tiny.yaml", PointMAE),
        ("configs/shapes_point_cmae_tiny.yaml", PointCMAE),
    ],
)
def test_point_preset_trains_reloads_and_evaluates(tmp_path, capsys, preset, kind):
    data = make_shapes(tmp_path / "shapes", train=1, test=1, points=80, seed=0)
    out = tmp_path / "run"
    args = [f"data.path={data}", f"out_dir={out}", "eval.knn_k=3", *TINY]
    assert main(["pretrain", preset, *args]) == 0
    printed = capsys.readouterr().out
    assert "steps 2" in printed and "kNN top-1 random init" in printed
    model, cfg = load_model(out / "checkpoint")
    assert type(model) is kind and cfg.data.source == "points"
    assert main(["eval", "knn", str(out), "-k", "3", "--no-cache"]) == 0
    record = json.loads((out / "eval" / "eval_knn_k-3.json").read_text())  # named by -k 3
    assert record["test_items"] == 12 and 0.0 <= record["top1"] <= 1.0


def test_training_batches_are_augmented_clouds(tmp_path):
    """The loop's batch preparation turns clouds, it does not normalise them as pixels."""
    from mimkit.config import load_config
    from mimkit.train.loop import prepare_batch

    cfg = load_config("configs/shapes_point_mae_tiny.yaml", ["data.point_jitter=0"])
    clouds = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 50, 3)).astype(np.float32))
    x = prepare_batch(clouds, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert x.shape == clouds.shape and x.dtype == torch.float32
    assert not torch.allclose(x, clouds)
    # scale and shift per axis, turn about z: the z column is an affine map of the input's
    z, ref = x[..., 2], clouds[..., 2]
    slope = (z[:, 1] - z[:, 0]) / (ref[:, 1] - ref[:, 0])
    assert torch.allclose(
        z, ref * slope[:, None] + (z[:, :1] - ref[:, :1] * slope[:, None]), atol=1e-5
    )


@pytest.mark.parametrize(
    "override, field",
    [("data.points=0", "data.points"), ("data.point_scale=[1.2,0.8]", "data.point_scale"),
     ("data.point_jitter=-1", "data.point_jitter")],
)  # fmt: skip
def test_bad_point_settings_are_one_line_errors(tmp_path, capsys, override, field):
    data = make_shapes(tmp_path / "shapes", train=1, test=1, points=16, seed=0)
    code = main(["pretrain", "configs/shapes_point_mae_tiny.yaml", f"data.path={data}",
                 f"out_dir={tmp_path / 'run'}", *TINY, override])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mimkit: error: ") and field in err[-1]


def test_bad_points_folder_is_one_line_error(tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.ply").write_text("not a ply\n")
    code = main(["pretrain", "configs/shapes_point_mae_tiny.yaml", f"data.path={tmp_path}",
                 f"out_dir={tmp_path / 'run'}", *TINY])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("mimkit: error: ") and "no readable point clouds" in err[-1]


def test_data_synth_shapes_writes_a_split_benchmark(tmp_path, capsys):
    out = tmp_path / "shapes"
    args = ["data", "synth", "shapes", str(out), "--train", "2", "--test", "1", "--points", "32"]
    assert main(args) == 0
    assert "wrote shapes" in capsys.readouterr().out
    assert len(list((out / "train").rglob("*.npy"))) == 2 * len(list((out / "test").rglob("*.npy")))
    assert len(list((out / "test").iterdir())) >= 10
