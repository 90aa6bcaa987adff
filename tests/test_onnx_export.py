"""`mimkit export CKPT --to onnx OUT`: the encoder's features in onnxruntime, any batch size."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from test_cli import assert_one_line_error

from mimkit.cli import main

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


@pytest.mark.slow  # torch's ONNX exporter takes ~8 s to load and trace on a 2-core CPU
@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime not installed (mimkit[onnx])")
def test_onnx_encoder_matches_pytorch_at_any_batch(tmp_path, capsys):
    import onnxruntime  # optional: mimkit[onnx]

    data = make_learnable_idx(tmp_path / "idx", n_train=8, n_test=8)
    folder, cfg, model = save_tiny_checkpoint(tmp_path, data)
    out = tmp_path / "onnx"
    assert main(["export", str(folder), "--to", "onnx", str(out)]) == 0
    assert "encoder features" in capsys.readouterr().out
    meta = json.loads((out / "preprocess.json").read_text())
    assert meta["input_shape"] == ["batch", 1, 28, 28] and meta["mean"] == cfg.data.mean
    session = onnxruntime.InferenceSession(
        str(out / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    encoder = model.encoder.eval()
    for batch in (1, 3, 7):  # traced at 2: the batch axis is dynamic
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(["features"], {"pixels": x.numpy()})
        want = encoder.features(x).numpy()
        assert got.shape == (batch, cfg.model.embed_dim)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_onnx_export_refuses_a_folder_in_use(tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=8, n_test=8)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    code = main(["export", str(folder), "--to", "onnx", str(tmp_path / "taken")])
    if HAS_ONNX:
        assert_one_line_error(capsys, code, "already exists and is not empty")
    else:
        assert_one_line_error(capsys, code, r"pip install 'mimkit\[onnx\]'")


def test_onnx_export_without_its_packages_says_which_extra(tmp_path, monkeypatch):
    import sys

    from mimkit.errors import ConfigError
    from mimkit.interop.onnx import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'mimkit\[onnx\]'"):
        export_onnx(tmp_path / "ckpt", tmp_path / "out")
