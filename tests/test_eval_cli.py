"""`mimkit eval linear|fewshot|finetune|knn` end to end on a tiny checkpoint."""

import json
import logging

import pytest
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.compress.iared2 import PolicySpec, TokenPolicy, save_policy
from mimkit.eval import cache as cache_mod


@pytest.fixture()
def ckpt(tmp_path):
    data = make_learnable_idx(tmp_path / "idx", n_train=80, n_test=24)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    return folder


@pytest.mark.slow
def test_linear_prints_top1_writes_json_and_reuses_cached_features(ckpt, capsys, monkeypatch):
    args = ["eval", "linear", str(ckpt), "--lrs", "0.01", "0.1", "--epochs", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "linear probe top-1 (pretrained, pool avg, block 2/2):" in out and "<- chosen" in out
    results = ckpt.parent / "eval"  # beside checkpoint/, which training replaces
    first = json.loads((results / "eval_linear.json").read_text())
    assert 0.0 <= first["top1"] <= 1.0 and first["lr"] in (0.01, 0.1)
    assert 0.0 <= first["train_top1"] <= 1.0 and "(train " in out
    assert first["train_items"] == 80 and first["test_items"] == 24
    assert len(list((results / "features").glob("*.safetensors"))) == 2  # train and test

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed although they are cached")

    monkeypatch.setattr(cache_mod, "extract_features", no_extraction)
    assert main(args) == 0
    assert json.loads((results / "eval_linear.json").read_text())["top1"] == first["top1"]
    assert main(["eval", "knn", str(ckpt), "-k", "5"]) == 0  # knn shares the cache
    assert main(["eval", "fewshot", str(ckpt), "--shots", "1", "5", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "few-shot linear probe (pretrained" in out and "± " in out
    few = json.loads((results / "eval_fewshot.json").read_text())
    assert [r["shots"] for r in few["results"]] == [1, 5] and len(
        few["results"][0]["per_seed"]
    ) == 2


def test_random_init_and_other_blocks_are_separate_results(ckpt, capsys):
    assert (
        main(["eval", "linear", str(ckpt), "--random-init", "--lrs", "0.1", "--epochs", "2"]) == 0
    )
    assert main(["eval", "linear", str(ckpt), "--block", "1", "--pool", "cls", "--lrs", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "random-init" in out and "pool cls, block 1/2" in out
    results = ckpt.parent / "eval"
    assert json.loads((results / "eval_linear_random_init.json").read_text())["random_init"] is True
    # named by the settings given, so the default run's result is not overwritten
    assert json.loads((results / "eval_linear_pool-cls_block-1.json").read_text())["block"] == 1
    assert len(list((results / "features").glob("*.safetensors"))) == 4


def test_finetune_command(ckpt, tmp_path, capsys, caplog):
    args = ["eval", "finetune", str(ckpt), "--epochs", "1", "--batch-size", "16"]
    args += ["--max-steps", "2"]
    with caplog.at_level(logging.INFO, logger="mimkit"):
        code = main(args)
    assert code == 0
    assert "fine-tune top-1 (pretrained, 0 epoch(s), 2 steps" in capsys.readouterr().out
    # what the recipe chose is printed before training: the flag given and the chosen defaults
    plan = next(r.message for r in caplog.records if r.message.startswith("fine-tune plan"))
    assert "batch 16" in plan and "layer decay 0.75" in plan and "label smoothing 0.1" in plan
    record = json.loads((ckpt.parent / "eval" / "eval_finetune.json").read_text())
    assert record["steps"] == 2 and record["layer_decay"] == 0.75
    assert (ckpt.parent / "finetune" / "checkpoint" / "model.safetensors").is_file()


def test_bad_block_is_one_line_error(ckpt, capsys):
    code = main(["eval", "linear", str(ckpt), "--block", "7"])
    assert_one_line_error(capsys, code, r"block must be between 1 and the encoder depth 2, got 7")
    code = main(["eval", "finetune", str(ckpt), "--layer-decay", "1.5"])
    assert_one_line_error(capsys, code, r"layer_decay must be in \(0, 1\]")


def test_finetune_with_a_token_reduction_is_recorded_and_kept_apart(ckpt, tmp_path, capsys):
    args = [
        "eval",
        "finetune",
        str(ckpt),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps",
        "2",
    ]
    assert main([*args, "--tome-flops", "0.6"]) == 0
    results = ckpt.parent / "eval"
    record = json.loads((results / "eval_finetune_tome-flops-0.6.json").read_text())
    assert record["token_reduction"]["method"] == "tome"
    assert sum(record["token_reduction"]["r_per_block"]) > 0
    run = ckpt.parent / "finetune_tome-flops-0.6"
    assert (
        json.loads((run / "finetune.json").read_text())["token_reduction"]
        == record["token_reduction"]
    )
    assert not (results / "eval_finetune.json").exists()  # the plain fine-tune's name stays free
    schedule = tmp_path / "rates.json"
    schedule.write_text(json.dumps({"prune_keep": [36, 20], "merge_keep": [30, 10]}))
    assert main([*args, "--diffrate", str(schedule)]) == 0
    record = json.loads((results / "eval_finetune_diffrate-rates.json").read_text())
    assert record["token_reduction"]["merge_keep"] == [30, 10]
    policy = TokenPolicy(PolicySpec(32, [0, 1]))  # the tiny encoder: 32 wide, 2 blocks
    save_policy(policy, tmp_path / "policy", {"counts": [10, 5]})
    assert main([*args, "--iared2", str(tmp_path / "policy")]) == 0
    record = json.loads((results / "eval_finetune_iared2-policy.json").read_text())
    assert record["token_reduction"]["counts"] == [10, 5]
    capsys.readouterr()
    code = main([*args, "--tome-r", "1", "--diffrate", str(schedule)])
    assert_one_line_error(capsys, code, "one token reduction at a time")
    schedule.write_text(json.dumps({"prune_keep": [36], "merge_keep": [30]}))
    code = main([*args, "--diffrate", str(schedule)])
    assert_one_line_error(capsys, code, "a schedule of 1 blocks, the encoder has 2")
    schedule.write_text("{}")
    code = main([*args, "--diffrate", str(schedule)])
    assert_one_line_error(capsys, code, "not a DiffRate schedule")
