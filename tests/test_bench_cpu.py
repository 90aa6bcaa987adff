"""The CPU fast path's choices (attention kernel, default precision) and what `mimkit bench` reads
from the machine (matmul peak at the model's shapes, the attention kernel that ran).

Choices are tested as logic, never by timing: the timings behind them are in
benchmarks/results/cpu_*.md.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_config

from mimkit.bench.kernels import attention_kernels, attention_kernels_from_ops
from mimkit.bench.machine import cpu_family_model
from mimkit.bench.peak import measure_matmul_peak, model_matmul_shapes
from mimkit.bench.run import _comparisons, amp_name, parse_variant
from mimkit.bench.step import mimkit_step
from mimkit.cli import main
from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models import ModelConfig
from mimkit.models.vit import CPU_BF16_MATMUL_MAX_TOKENS, attention, attention_kernel
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train import runtime
from mimkit.train.runtime import cpu_auto_amp, describe_amp, pick_amp_dtype


def test_bf16_attention_on_cpu_is_matmul_softmax_up_to_the_measured_length():
    assert attention_kernel(17, "cpu", torch.bfloat16) == "matmul"
    assert attention_kernel(CPU_BF16_MATMUL_MAX_TOKENS, "cpu", torch.bfloat16) == "matmul"
    assert attention_kernel(CPU_BF16_MATMUL_MAX_TOKENS + 1, "cpu", torch.bfloat16) == "sdpa"
    # fp32 on CPU keeps SDPA (as fast or faster there), and GPUs always use it
    assert attention_kernel(17, "cpu", torch.float32) == "sdpa"
    assert attention_kernel(17, "cuda", torch.bfloat16) == "sdpa"


def test_matmul_softmax_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attention(q, k, v), expected)  # fp32: SDPA itself
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, atol=3e-2, rtol=3e-2)


def _tiny_step(amp_dtype):
    torch.manual_seed(0)
    model = MaskedAutoencoder(tiny_model_config(), MaskingConfig(ratio=0.75))
    return mimkit_step(model, torch.randn(2, 3, 16, 16), amp_dtype)


def test_the_bf16_cpu_step_no_longer_runs_the_flash_kernel():
    """Issue 15's bf16 slowdown: SDPA's CPU flash backward took 41% of the bf16 step at 17
    tokens. The profiler must now see matmul-softmax in bf16, and SDPA flash in fp32."""
    cpu = torch.device("cpu")
    assert attention_kernels(_tiny_step(torch.bfloat16), cpu) == ["matmul-softmax"]
    assert attention_kernels(_tiny_step(None), cpu) == ["sdpa-flash-cpu"]


def test_attention_kernel_names_from_profiled_ops():
    assert attention_kernels_from_ops(
        ["aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu"]
    ) == ["sdpa-flash-cpu"]
    assert attention_kernels_from_ops(["aten::_scaled_dot_product_efficient_attention"]) == [
        "sdpa-efficient"
    ]
    assert attention_kernels_from_ops(["aten::bmm", "aten::_softmax"]) == ["matmul-softmax"]
    # the math backend runs softmax inside: one kernel, not two
    assert attention_kernels_from_ops(
        ["aten::_scaled_dot_product_attention_math", "aten::_softmax"]
    ) == ["sdpa-math"]
    assert attention_kernels_from_ops(["cpp_fused__softmax_3", "aten::mm"]) == ["compiled-softmax"]
    compiled = ["Torch-Compiled Region: 0/0", "CompiledFunction", "aten::mm"]
    assert attention_kernels_from_ops(compiled) == ["compiled-fused"]
    assert attention_kernels_from_ops(
        [*compiled, "aten::_scaled_dot_product_flash_attention_for_cpu"]
    ) == ["sdpa-flash-cpu"]
    assert attention_kernels_from_ops(["aten::mm", "aten::addmm"]) == []


def test_cpu_auto_precision_is_bf16_where_the_cpu_computes_bf16(monkeypatch):
    assert cpu_auto_amp("amx") == torch.bfloat16
    assert cpu_auto_amp("avx512_bf16") == torch.bfloat16
    assert cpu_auto_amp(None) is None  # emulated bf16 is slower than fp32: keep fp32
    cpu = torch.device("cpu")
    for units in ("amx", "avx512_bf16"):
        monkeypatch.setattr(runtime, "cpu_bf16_units", lambda units=units: units)
        assert pick_amp_dtype("auto", cpu) == torch.bfloat16
        assert describe_amp("auto", cpu, torch.bfloat16) == (
            f"precision: bfloat16 autocast, fp32 weights (train.amp=auto: this CPU has {units}; "
            "train.amp=off trains in fp32)"
        )
    assert pick_amp_dtype("off", cpu) is None and pick_amp_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: None)
    assert pick_amp_dtype("auto", cpu) is None
    assert describe_amp("auto", cpu, None) == (
        "precision: fp32 (train.amp=auto: this CPU has no bf16 hardware)"
    )
    assert describe_amp("off", cpu, None) == "precision: fp32 (train.amp=off)"


def test_cpu_bf16_units_reads_torchs_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert runtime.cpu_bf16_units() == "amx"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.cpu_bf16_units() == "avx512_bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert runtime.cpu_bf16_units() is None


def test_cpu_family_and_model_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
        "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n"
    )
    assert cpu_family_model(cpuinfo) == "family 26, model 2"
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")  # an Arm board
    assert cpu_family_model(cpuinfo) is None
    assert cpu_family_model(tmp_path / "missing") is None


def test_matmul_shapes_of_the_demo_model():
    cfg = ModelConfig(
        preset="vit_tiny",
        img_size=28,
        in_chans=1,
        patch_size=7,
        depth=6,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    )
    # 16 patches, 4 visible + cls in the encoder (192 wide), 16 + cls in the decoder (128)
    assert model_matmul_shapes(cfg, 2, 0.75) == [
        (10, 192, 576),
        (10, 192, 768),
        (10, 768, 192),
        (34, 128, 384),
        (34, 128, 512),
        (34, 512, 128),
    ]


def test_matmul_peak_measures_each_dtype_and_shape():
    peaks = measure_matmul_peak([(8, 16, 32), (4, 8, 8)], torch.device("cpu"), rounds=1)
    assert peaks["fp32"]["peak_gflops"] == max(s["gflops"] for s in peaks["fp32"]["by_shape"])
    assert [s["shape"] for s in peaks["bf16"]["by_shape"]] == [[8, 16, 32], [4, 8, 8]]
    assert peaks["bf16"]["peak_gflops"] > 0 and peaks["fp32"]["peak_gflops_per_cpu_s"] > 0
    assert peaks["bf16_over_fp32"] > 0


def test_bench_variants_parse_and_refuse_bad_ones(capsys):
    assert parse_variant("fp32") == (None, False)
    assert parse_variant("bf16+compile") == (torch.bfloat16, True)
    assert amp_name(torch.bfloat16) == "bf16" and amp_name(None) == "fp32"
    with pytest.raises(ConfigError, match="--variants"):
        parse_variant("int8")
    assert main(["bench", "--variants", "fp32,bf16+fast"]) == 2
    assert "--variants: expected fp32, bf16 or fp16" in capsys.readouterr().err
    assert main(["bench", "--hf-attention", "sdpa,flash"]) == 2
    assert "--hf-attention: expected sdpa, eager or both" in capsys.readouterr().err


def test_comparisons_are_against_transformers_fastest_attention_implementation():
    """With --hf-attention sdpa,eager each implementation is its own step; ours is compared
    with the faster of them per variant and overall, never with a slow default."""

    def row(variant: str, wall: float, cpu: float) -> dict:
        return {"variant": variant, "median_step_s": wall, "median_step_cpu_s": cpu}

    results = {
        "mimkit fp32": row("fp32", 1.0, 1.0),
        "transformers fp32 sdpa": row("fp32", 1.0, 1.0),
        "transformers fp32 eager": row("fp32", 1.25, 1.25),
        "mimkit bf16": row("bf16", 0.5, 0.5),
        "transformers bf16 sdpa": row("bf16", 2.0, 0.8),
        "transformers bf16 eager": row("bf16", 1.0, 1.0),
    }
    out = _comparisons(results, [" fp32", " bf16"], named=True, with_hf=True)
    assert out["speedup_vs_transformers"] == {"fp32": 1.0, "bf16": 2.0}  # eager by wall time
    assert out["speedup_vs_transformers_cpu_time"]["bf16"] == 1.6  # sdpa by CPU time
    assert out["best_vs_best"] == {
        "mimkit": "mimkit bf16",
        "transformers": "transformers fp32 sdpa",
        "speedup": 2.0,
    }


@pytest.mark.slow
def test_bench_variants_time_each_side_by_side(tmp_path):
    out = tmp_path / "v.json"
    args = ["bench", "--preset", "vit_tiny", "--img-size", "32", "--batch", "2", "--steps", "1"]
    args += ["--warmup", "1", "--no-pipeline", "--variants", "fp32,bf16", "--out", str(out)]
    args += ["--hf-attention", "sdpa,eager"]
    args += ["model.patch_size=8", "model.depth=1", "model.decoder_depth=1"]
    args += ["model.decoder_embed_dim=32", "model.decoder_num_heads=2"]
    assert main(args) == 0
    record = json.loads(out.read_text())
    step, results = record["step"], record["step"]["results"]
    assert list(results) == [
        "mimkit fp32",
        "transformers fp32 sdpa",
        "transformers fp32 eager",
        "mimkit bf16",
        "transformers bf16 sdpa",
        "transformers bf16 eager",
    ]
    assert results["mimkit bf16"]["attention"] == ["matmul-softmax"]
    assert results["mimkit fp32"]["attention"] == ["sdpa-flash-cpu"]
    assert results["transformers bf16 sdpa"]["attention"] == ["sdpa-flash-cpu"]
    assert results["transformers bf16 eager"]["attention"] == ["matmul-softmax"]
    assert results["transformers bf16 eager"]["attn_implementation"] == "eager"
    assert "--hf-attention sdpa,eager" in record["command"]
    assert results["mimkit bf16"]["amp"] == "bf16" and not results["mimkit bf16"]["compile"]
    assert set(step["speedup_vs_transformers"]) == {"fp32", "bf16"}
    assert step["best_vs_best"]["mimkit"].startswith("mimkit ")
    assert step["matmul_peak"]["bf16"]["peak_gflops"] > 0
    assert results["mimkit fp32"]["mfu_vs_measured_peak"] > 0
    assert "MFU, CPU time" in out.with_suffix(".md").read_text()
