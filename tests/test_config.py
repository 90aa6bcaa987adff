import pytest

from mimkit.config import load_config, parse_override
from mimkit.errors import ConfigError


def test_preset_loads_and_overrides_apply():
    cfg = load_config(
        "configs/fmnist_mae_tiny.yaml",
        ["train.epochs=3", "data.limit=2048", "out_dir=runs/x", "train.lr=1e-3"],
    )
    assert cfg.train.epochs == 3
    assert cfg.data.limit == 2048
    assert cfg.out_dir == "runs/x"
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.in_chans == 1


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["train.base_lr=1"]).train.base_lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 1\.5"):
        load_config(None, ["train.epochs=1.5"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", r"unknown config key 'train\.epoch'"),
        ("bogus.x=1", r"unknown config key 'bogus'"),
        ("train.hflip=true", r"unknown config key 'train\.hflip'"),
        ("data.hflip=maybe", r"data\.hflip: expected bool"),
        ("model.img_size=[1,2,3]", r"model\.img_size"),
        ("train.epochs", r"expected key=value"),
        ("train=3", r"expected TrainConfig"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/fmnist_mae_tiny.yaml", [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_override_values_are_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=true") == ("a", True)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_heads=0", "model.num_heads must be >= 1"),
        ("model.depth=0", "model.depth must be >= 1"),
        ("model.decoder_num_heads=0", "model.decoder_num_heads must be >= 1"),
        ("model.img_size=[0,28]", "model.img_size must be >= 1"),
        ("model.drop_path_rate=1.5", "model.drop_path_rate must be in"),
    ],
)
def test_model_sizes_are_refused_by_name_before_any_division(override, message):
    """The config fuzzer found model.num_heads=0 reaching `embed_dim % num_heads`."""
    with pytest.raises(ConfigError, match=message):
        load_config("configs/fmnist_mae_tiny.yaml", [override])


def test_yaml_1_1_boolean_words_stay_text_for_string_settings(tmp_path):
    # YAML 1.1 read `off` as False, so `train.amp=off` was refused as "expected str"
    cfg = load_config("configs/fmnist_mae_tiny.yaml", ["train.amp=off", "train.progress=no"])
    assert cfg.train.amp == "off" and cfg.train.progress is False
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  amp: off\n  progress: On\n")
    cfg = load_config(str(path))
    assert cfg.train.amp == "off" and cfg.train.progress is True
    assert parse_override("train.progress=false") == ("train.progress", False)
    with pytest.raises(ConfigError, match="train.progress"):
        load_config("configs/fmnist_mae_tiny.yaml", ["train.progress=maybe"])
