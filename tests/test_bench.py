"""The benchmark: FLOP formula against PyTorch's counter, and `mimkit bench` end to end."""

import json

import pytest
import torch
from conftest import method_parts
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mimkit.bench.flops import block_flops, mae_flops_per_image, mfu
from mimkit.bench.machine import gpu_peak_tflops
from mimkit.bench.run import amp_name
from mimkit.cli import main
from mimkit.masking import num_kept
from mimkit.models import ModelConfig
from mimkit.objectives.mae import build_mae
from mimkit.train.runtime import pick_amp_dtype


def test_flop_formula_matches_pytorchs_counter_on_our_forward():
    parts = method_parts(
        img_size=[32, 48],
        in_chans=3,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        decoder_embed_dim=32,
        decoder_depth=3,
        decoder_num_heads=2,
        mask_ratio=0.6,
    )
    model = build_mae(*parts)
    batch = 3
    # the math backend runs attention as matmuls, which the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, 3, 32, 48))
    c = model.cfg
    flops = mae_flops_per_image(c, model.masking.ratio)
    n, k, pixels = c.num_patches, num_kept(c.num_patches, model.masking.ratio), 8 * 8 * 3
    # work our implementation does beyond the method's FLOPs: patch embedding of the hidden
    # patches (embedded, then dropped by the gather) and the prediction at the cls position
    extra = 2 * (n - k) * pixels * c.embed_dim + 2 * c.decoder_embed_dim * pixels
    measured = counter.get_total_flops() / batch
    assert measured == flops["encoder_fwd"] + flops["decoder_fwd"] + extra
    assert flops["train_step"] == 3 * (flops["encoder_fwd"] + flops["decoder_fwd"])


def test_flops_of_mae_vit_base_and_mfu():
    flops = mae_flops_per_image(ModelConfig(preset="vit_base", img_size=224))
    # ViT-B/16, by hand: encoder 12 x (2*50*768^2*12 + 4*50^2*768) + 2*49*768*768
    # = 8.6434 G; decoder 8 x (2*197*512^2*12 + 4*197^2*512) + 2*50*768*512 + 2*196*512*768
    # = 10.7446 G
    assert flops["encoder_fwd"] == 8_643_428_352
    assert flops["decoder_fwd"] == 10_744_643_584
    assert block_flops(10, 4, 4.0) == 2 * 10 * 16 * 12 + 4 * 100 * 4
    assert mfu(1000.0, 1e9, 2e12) == 0.5 and mfu(1.0, 1.0, None) is None
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops("Some other card") is None


@pytest.mark.slow
def test_bench_command_writes_json_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            "--preset",
            "vit_tiny",
            "--img-size",
            "32",
            "--batch",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--pipeline-items",
            "16",
            "--workers",
            "1",
            "--out",
            str(out),
            "model.patch_size=8",
            "model.depth=1",
            "model.decoder_depth=1",
            "model.decoder_embed_dim=32",
            "model.decoder_num_heads=2",
        ]
    )
    assert code == 0
    record = json.loads(out.read_text())
    step = record["step"]
    assert set(step["results"]) == {"mimkit", "transformers"}
    assert step["results"]["mimkit"]["params"] == step["results"]["transformers"]["params"]
    # train.amp=auto: bf16 where the CPU computes bf16 (AMX, AVX512-BF16), else fp32
    auto = pick_amp_dtype("auto", torch.device("cpu"))
    assert step["speedup_vs_transformers"] > 0 and step["amp"] == amp_name(auto)
    assert record["pipeline"]["in_memory_uint8"]["images"] == 12  # 4 batches, first untimed
    assert record["pipeline"]["image_folder"]["img_per_s"] > 0
    assert record["command"].startswith("mimkit bench --preset vit_tiny --img-size 32")
    assert {"cpu", "torch", "cores"} <= record["machine"].keys()
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "mimkit / transformers" in out.with_suffix(".md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_bench_refuses_bad_arguments(capsys):
    assert main(["bench", "--batch", "0"]) == 2
    assert "--batch and --steps must be >= 1" in capsys.readouterr().err
    assert main(["bench", "model.preset=vit_gigantic"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["bench", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
