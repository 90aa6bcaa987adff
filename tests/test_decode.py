"""`data.decode`: JPEGs of an image folder decoded on the GPU where it can run (issue 16)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.config import load_config
from mimkit.data import decode
from mimkit.data.config import DataConfig
from mimkit.data.sources import TrainSource
from mimkit.errors import ConfigError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def jpeg_folder(folder, n=6, side=40, bad=(), png=()):
    """Smooth RGB JPEGs (and PNGs at `png`); `bad` indices hold a cut-off JPEG stream."""
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:side, 0:side]
    for i in range(n):
        pixels = np.stack([(x * 5 + i * 20) % 256, (y * 3 + i * 7) % 256, (x + y + i) % 256], -1)
        image = Image.fromarray(pixels.astype(np.uint8))
        if i in png:
            image.save(folder / f"{i}.png")
            continue
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
        (folder / f"{i}.jpg").write_bytes(data[: len(data) // 3] if i in bad else data)
    return folder


def all_batches(source, batch=2):
    return list(source.batches(0, batch))


def test_the_setting_is_checked_and_gpu_falls_back_in_one_printed_line(capsys):
    cpu = torch.device("cpu")
    assert decode.resolve_decode("cpu", cpu) == "cpu"
    assert decode.resolve_decode("auto", cpu) == "cpu" and capsys.readouterr().out == ""
    assert decode.resolve_decode("gpu", cpu) == "cpu"
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["data.decode=gpu: the run's device is cpu, not CUDA; decoding images on the CPU"]
    with pytest.raises(ConfigError, match="data.decode must be one of"):
        load_config(None, ["data.decode=nvjpeg"])


def test_without_torchvision_gpu_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(decode, "_decode_jpeg", lambda: None)
    problem = decode.gpu_decode_problem(torch.device("cuda"))
    assert problem == "torchvision is not installed (pip install 'mimkit[gpu-decode]')"


def test_a_run_asking_gpu_here_decodes_on_the_cpu_the_same_batches(tmp_path, capsys):
    folder = jpeg_folder(tmp_path / "img")
    cfg = DataConfig(source="folder", path=str(folder))
    cpu = all_batches(TrainSource(cfg, 3, (32, 32), 0))
    source = TrainSource(DataConfig(source="folder", path=str(folder), decode="gpu"), 3, (32, 32), 0)
    assert decode.decode_on(source, "gpu", 3, (32, 32), torch.device("cpu")) == "cpu"
    assert "decoding images on the CPU" in capsys.readouterr().out
    for a, b in zip(cpu, all_batches(source), strict=True):
        assert torch.equal(a.images, b.images)


def pil_decode_jpeg(data, mode=None, device=None):
    """A stand-in for torchvision's decode_jpeg (same signature, RuntimeError on a bad stream)."""
    if isinstance(data, list):
        return [pil_decode_jpeg(d, mode, device) for d in data]
    try:
        image = Image.open(io.BytesIO(data.numpy().tobytes()))
        image.load()
    except OSError as exc:
        raise RuntimeError(f"decode failed: {exc}") from None
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device)


def test_batches_through_the_decoder_keep_order_labels_and_count_bad_files(tmp_path, monkeypatch):
    """The batching around the GPU decoder, with PIL standing in for nvJPEG on this CPU."""
    monkeypatch.setattr(decode, "_decode_jpeg", lambda: pil_decode_jpeg)
    monkeypatch.setattr(decode, "_read_mode", lambda channels: None)
    monkeypatch.setattr(decode, "gpu_decode_problem", lambda device: None)
    folder = jpeg_folder(tmp_path / "img", n=6, bad=(3,), png=(4,))
    cfg = DataConfig(source="folder", path=str(folder))
    reference = all_batches(TrainSource(cfg, 3, (40, 40), 0))
    source = TrainSource(cfg, 3, (40, 40), 0)
    assert decode.decode_on(source, "gpu", 3, (40, 40), torch.device("cpu")) == "gpu"
    batches = all_batches(source)
    for ref, got in zip(reference, batches, strict=True):
        assert torch.equal(ref.kept, got.kept) and torch.equal(ref.labels, got.labels)
        assert torch.equal(ref.images, got.images)  # same size: no resize, PIL both ways
    assert sum(b.skipped for b in batches) == 1  # the cut-off JPEG, found by the decoder


@needs_cuda
@pytest.mark.gpu
def test_gpu_decode_matches_pil_within_a_few_levels_and_skips_a_bad_jpeg(tmp_path):
    pytest.importorskip("torchvision")
    folder = jpeg_folder(tmp_path / "img", n=8, side=48, bad=(5,), png=(2,))
    cfg = DataConfig(source="folder", path=str(folder))
    reference = all_batches(TrainSource(cfg, 3, (32, 32), 0), batch=4)
    source = TrainSource(cfg, 3, (32, 32), 0)
    assert decode.decode_on(source, "gpu", 3, (32, 32), torch.device("cuda")) == "gpu"
    batches = all_batches(source, batch=4)
    for ref, got in zip(reference, batches, strict=True):
        assert got.images.is_cuda and got.images.dtype == torch.uint8
        assert torch.equal(ref.kept, got.kept) and torch.equal(ref.labels, got.labels)
        diff = (got.images.cpu().float() - ref.images.float()).abs()
        assert diff.mean() < 3 and diff.max() < 48, (diff.mean(), diff.max())
    assert sum(b.skipped for b in batches) == 1


@needs_cuda
@pytest.mark.gpu
def test_a_gpu_pretraining_run_decodes_on_the_gpu(tmp_path):
    pytest.importorskip("torchvision")
    from mimkit.train.loop import pretrain

    folder = jpeg_folder(tmp_path / "img", n=8, side=48)
    cfg = load_config(None, [
        "data.source=folder", f"data.path={folder}", "data.decode=gpu", "model.img_size=32",
        "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
        "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "train.batch_size=4",
        "train.epochs=1", "train.log_every=1", "train.progress=false", "train.compile=false",
        f"out_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    result = pretrain(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 2 and all(np.isfinite(r["loss"]) for r in lines if "loss" in r)
