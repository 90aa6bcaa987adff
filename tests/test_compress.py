import json
import math

import pytest
import torch
from conftest import tiny_model_overrides
from test_data import make_idx_folder

from mimkit.cli import main
from mimkit.compress.importance import block_scores, blocks_to_keep, histogram_entropy
from mimkit.compress.oracle import oracle_sensitivity
from mimkit.compress.prune import prune_blocks
from mimkit.compress.tome import (
    attention_with_keys,
    bipartite_soft_matching,
    merge_weighted,
    tome_features,
    tome_tokens,
)
from mimkit.models import ModelConfig
from mimkit.objectives.mae import build_mae
from mimkit.train.checkpoint import load_model


def tiny(depth=4, pool="cls"):
    torch.manual_seed(0)
    return build_mae(
        ModelConfig(
            img_size=16, in_chans=1, patch_size=2, embed_dim=32, depth=depth, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, pool=pool,
        )
    ).eval()  # fmt: skip


# --- the entropy estimator on distributions whose entropy is known --------------------------


def test_entropy_of_uniform_values_is_log_bins():
    values = torch.linspace(0, 1, 256 * 1000)
    assert histogram_entropy(values, bins=256) == pytest.approx(math.log(256), abs=1e-3)


def test_entropy_of_two_equal_masses_is_log_two_and_constant_is_zero():
    values = torch.cat([torch.zeros(500), torch.ones(500)])
    assert histogram_entropy(values, bins=64) == pytest.approx(math.log(2), abs=1e-9)
    assert histogram_entropy(torch.full((100,), 3.0)) == 0.0


def test_entropy_of_gaussian_matches_differential_entropy_minus_log_bin_width():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2_000_000, generator=gen, dtype=torch.float64)
    bins = 256
    width = (values.max() - values.min()).item() / bins
    expected = 0.5 * math.log(2 * math.pi * math.e) - math.log(width)
    assert histogram_entropy(values, bins) == pytest.approx(expected, abs=0.02)


def test_wider_spread_of_values_over_more_bins_scores_higher():
    gen = torch.Generator().manual_seed(0)
    peaked = torch.cat([torch.zeros(9000), torch.randn(1000, generator=gen)])
    spread = torch.randn(10000, generator=gen)
    assert histogram_entropy(spread) > histogram_entropy(peaked)


def test_block_ranking_and_baselines():
    model = tiny(depth=4)
    with torch.no_grad():  # make block 2 nearly constant: lowest entropy
        for p in model.encoder.blocks[2].parameters():
            if p.ndim >= 2:
                p.fill_(0.01)
                p[0, 0] = 0.02
    scores = block_scores(model.encoder.blocks, "entropy")
    assert min(range(4), key=scores.__getitem__) == 2
    assert blocks_to_keep(scores, 3) == [0, 1, 3]
    assert blocks_to_keep(block_scores(model.encoder.blocks, "first"), 2) == [0, 1]
    assert blocks_to_keep(block_scores(model.encoder.blocks, "last"), 2) == [2, 3]
    r1 = block_scores(model.encoder.blocks, "random", seed=1)
    assert r1 == block_scores(model.encoder.blocks, "random", seed=1)
    assert r1 != block_scores(model.encoder.blocks, "random", seed=2)
    assert len(block_scores(model.encoder.blocks, "norm")) == 4
    with pytest.raises(ValueError, match="keep must be between 1 and 4"):
        blocks_to_keep(scores, 0)


# --- pruning -----------------------------------------------------------------------------------


def test_pruned_model_keeps_the_chosen_blocks_and_runs():
    model = tiny(depth=4)
    pruned = prune_blocks(model, [0, 3])
    assert pruned.cfg.depth == 2 and len(pruned.encoder.blocks) == 2
    for new, old in enumerate([0, 3]):
        for (n1, a), (n2, b) in zip(
            pruned.encoder.blocks[new].state_dict().items(),
            model.encoder.blocks[old].state_dict().items(),
            strict=True,
        ):
            assert n1 == n2 and torch.equal(a, b)
    assert torch.equal(pruned.decoder.pred.weight, model.decoder.pred.weight)
    x = torch.randn(2, 1, 16, 16)
    out = pruned(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)


def test_oracle_finds_a_block_that_does_nothing():
    model = tiny(depth=3)
    with torch.no_grad():  # block 1 becomes the identity: both residual branches output zero
        block = model.encoder.blocks[1]
        for p in (*block.attn.proj.parameters(), *block.mlp.fc2.parameters()):
            p.zero_()
    x = torch.randn(8, 1, 16, 16)
    reference = model.encode(x)

    def probe(m):
        return -float((m.encode(x) - reference).pow(2).mean())

    full, drops = oracle_sensitivity(model, probe, progress=False)
    assert full == 0.0
    assert drops[1] == pytest.approx(0.0, abs=1e-10)
    assert drops[0] > 1e-6 and drops[2] > 1e-6


@pytest.mark.slow
def test_prune_command_writes_a_loadable_smaller_checkpoint(tmp_path, capsys):
    data = make_idx_folder(tmp_path / "idx", n_train=32, n_test=16)
    overrides = tiny_model_overrides(tmp_path / "run") + [
        "model.depth=4", "data.source=idx", f"data.path={data}", "train.batch_size=8",
        "train.epochs=1", "eval.knn=false",
    ]  # fmt: skip
    assert main(["pretrain", "configs/fmnist_mae_tiny.yaml", *overrides]) == 0
    for method in ("entropy", "norm", "random", "oracle"):
        out = tmp_path / f"pruned-{method}"
        args = ["prune", str(tmp_path / "run"), str(out), "--method", method, "--keep", "2"]
        assert main(args) == 0, method
        model, cfg = load_model(out)
        assert cfg.model.depth == 2 and len(model.encoder.blocks) == 2
        record = json.loads((out / "pruning.json").read_text())
        assert record["depth_before"] == 4 and len(record["kept_blocks"]) == 2
        assert len(record["scores"]) == 4
        assert model.encode(torch.zeros(1, 1, 28, 28)).shape == (1, 32)
    assert "pruned 4 -> 2 blocks by oracle" in capsys.readouterr().out


# --- token merging -------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_tome_with_r_zero_is_the_plain_encoder(pool):
    model = tiny(pool=pool)
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(tome_features(model.encoder, x, r=0), model.encode(x))


def test_token_sizes_add_up_and_tokens_shrink_by_r_per_block():
    model = tiny(depth=4)
    x = torch.randn(2, 1, 16, 16)  # 64 patches + cls
    tokens, size = tome_tokens(model.encoder, x, r=5)
    assert tokens.shape[1] == 65 - 4 * 5
    assert torch.allclose(size.sum(dim=1).squeeze(-1), torch.full((2,), 65.0))
    assert torch.all(size[:, 0] == 1)  # cls is never merged


def test_merging_never_takes_more_than_half():
    metric = torch.randn(1, 7, 4)
    merge = bipartite_soft_matching(metric, r=100)
    assert merge(torch.randn(1, 7, 3)).shape[1] == 7 - 3  # |A| = 4, cls protected


def test_proportional_attention_makes_a_merged_duplicate_count_twice():
    model = tiny()
    attn = model.encoder.blocks[0].attn
    torch.manual_seed(1)
    cls, t1, t2 = torch.randn(3, 1, 1, 32).unbind(0)
    with_duplicate = torch.cat([cls, t1, t1, t2], dim=1)
    merged = torch.cat([cls, t1, t2], dim=1)
    size = torch.tensor([1.0, 2.0, 1.0]).view(1, 3, 1)
    full, _ = attention_with_keys(attn, with_duplicate, None)
    prop, _ = attention_with_keys(attn, merged, size)
    assert torch.allclose(prop[:, 0], full[:, 0], atol=1e-5)  # cls sees the same mixture
    assert torch.allclose(prop[:, 2], full[:, 3], atol=1e-5)


def test_weighted_merge_of_identical_tokens_is_exact():
    x = torch.randn(1, 5, 4)
    x[:, 3] = x[:, 2]  # A = {0, 2, 4}, B = {1, 3}: token 2 matches its twin 3 exactly
    metric = x.clone()
    merged, size = merge_weighted(bipartite_soft_matching(metric, 1), x, torch.ones(1, 5, 1))
    assert merged.shape[1] == 4 and size.sum() == 5
    twin = (size.squeeze(-1) == 2).nonzero()[0, 1]
    assert torch.allclose(merged[0, twin], x[0, 2])


def test_tome_command_prints_a_tradeoff_table(tmp_path, capsys):
    data = make_idx_folder(tmp_path / "idx", n_train=32, n_test=16)
    overrides = tiny_model_overrides(tmp_path / "run") + [
        "data.source=idx", f"data.path={data}", "train.batch_size=8", "train.epochs=1",
        "eval.knn=false", "model.patch_size=4",
    ]  # fmt: skip
    assert main(["pretrain", "configs/fmnist_mae_tiny.yaml", *overrides]) == 0
    assert main(["tome", str(tmp_path / "run"), "--r", "0", "4"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "run" / "eval" / "tome.json").read_text())
    assert [r["r"] for r in rows] == [0, 4]
    assert rows[0]["tokens_out"] == 50 and rows[1]["tokens_out"] == 50 - 2 * 4
    assert rows[0]["speedup"] == 1.0 and rows[1]["img_per_s"] > 0
    assert "kNN top-1" in out and "speed-up" in out
