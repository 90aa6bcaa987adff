"""Fuzz: any value for any config field loads or is refused in one line naming the field.

Hypothesis draws values of every kind (numbers in and out of range, NaN, inf, strings, lists,
nulls, booleans) for every field of the run config; `scripts/fuzz_full.sh` runs many more
examples (MIMKIT_FUZZ_EXAMPLES). Loading must either give a config whose values are in range or
raise `ConfigError` with a one-line message naming the field; nothing else may escape.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimkit.config import EvalConfig, TrainConfig, load_config
from mimkit.data.config import DataConfig
from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig

PRESET = "configs/fmnist_mae_tiny.yaml"
EXAMPLES = int(os.environ.get("MIMKIT_FUZZ_EXAMPLES", "150"))
SECTIONS = {
    "train": TrainConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "masking": MaskingConfig,
    "model": ModelConfig,
}
KEYS = sorted(
    f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([0, 1, -1, 2, 3, 0.0, 1.0, -0.5, 0.5, 1.5, 1e-12, 1e30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))


def try_load(tmp_path, key, value):
    section, name = key.split(".")
    path = tmp_path / "cfg.yaml"
    tree = yaml.safe_load(Path(PRESET).read_text())
    tree.setdefault(section, {})[name] = value
    tree["out_dir"] = str(tmp_path / "out") if key != "out_dir" else tree["out_dir"]
    path.write_text(yaml.safe_dump(tree))
    return load_config(path)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_of_any_field_loads_or_is_refused_in_one_line(tmp_path, key, value):
    try:
        cfg = try_load(tmp_path, key, value)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert key.split(".")[1] in message, message
        return
    # accepted: the value is one the run can use
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    if isinstance(got, float):
        assert got == got and abs(got) != float("inf")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=-0.001", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.base_lr=0", "train.base_lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.betas=[0.9]", "train.betas"),
        ("train.save_every_steps=0", "train.save_every_steps"),
        ("data.mean=[0.5,0.5]", "data.mean"),
        ("data.std=[0]", "data.std"),
        ("data.crop_scale=[1.5,0.2]", "data.crop_scale"),
        ("data.on_bad_item=ignore", "data.on_bad_item"),
        ("model.img_size=[4,28,28]", "model.img_size"),
        ("eval.knn_k=0", "eval.knn_k"),
    ],
)
def test_named_bad_values_are_refused(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        load_config(PRESET, [override, f"out_dir={tmp_path / 'out'}"])
    assert "\n" not in str(err.value)


def test_binary_yaml_and_an_out_dir_that_is_a_file(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="bin.yaml: not a text file"):
        load_config(binary)
    bad = tmp_path / "tabs.yaml"
    bad.write_text("train:\n\tepochs: 1\n  x: [\n")
    with pytest.raises(ConfigError, match="tabs.yaml: not valid YAML") as err:
        load_config(bad)
    assert "\n" not in str(err.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="out_dir .*file.*is a file"):
        load_config(PRESET, [f"out_dir={tmp_path / 'file'}"])


def test_mask_ratio_zero_is_refused_by_pretrain_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mimkit.cli", "pretrain", PRESET, "masking.ratio=0.0",
         f"out_dir={tmp_path}", "--no-eval"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("mimkit: error: masking.ratio 0.0")
    assert "Traceback" not in out.stderr
