"""Linear and few-shot probes on toy features, and what may influence their model selection."""

import pytest
import torch
from eval_helpers import clustered_features

from mimkit.errors import DataError
from mimkit.eval import linear as linear_mod
from mimkit.eval.fewshot import fewshot_evaluate, sample_per_class
from mimkit.eval.linear import (
    LinearProbe,
    ProbeSettings,
    carve_validation,
    fit_probe,
    fit_probes,
    linear_probe,
    select_lr,
)

FAST = ProbeSettings(epochs=2, batch_size=32)


def test_probe_is_bn_without_affine_then_linear():
    probe = LinearProbe(16, 3)
    assert not probe.bn.affine and probe.bn.weight is None
    assert probe.head.in_features == 16 and probe.head.out_features == 3


def test_linear_probe_learns_separable_features():
    f_train, y_train = clustered_features(seed=0)
    f_test, y_test = clustered_features(n_per_class=20, seed=1)
    result = linear_probe(f_train, y_train, f_test, y_test, [0.01, 0.1, 1.0], settings=FAST)
    assert result.top1 > 0.95
    assert set(result.val_top1) == {0.01, 0.1, 1.0}
    assert result.val_top1[result.lr] == max(result.val_top1.values())
    assert result.train_items == 240 and result.test_items == 80


def test_linear_probe_reports_train_accuracy_apart_from_test():
    # 40 items in 64 dimensions with random labels: the probe memorises its training items,
    # while new items with random labels stay near chance; a mixed-up report cannot pass both
    gen = torch.Generator().manual_seed(0)
    f_train, y_train = torch.randn(40, 64, generator=gen), torch.randint(0, 2, (40,), generator=gen)
    f_test, y_test = torch.randn(400, 64, generator=gen), torch.randint(0, 2, (400,), generator=gen)
    settings = ProbeSettings(epochs=200, batch_size=40)
    result = linear_probe(f_train, y_train, f_test, y_test, [1.0], 0.1, settings)
    assert result.train_top1 >= 0.95
    assert abs(result.top1 - 0.5) < 0.1


def test_validation_split_is_carved_from_train_and_disjoint():
    fit, val = carve_validation(100, 0.2, seed=0)
    assert len(val) == 20 and len(fit) == 80
    assert set(fit.tolist()).isdisjoint(val.tolist())
    assert sorted(fit.tolist() + val.tolist()) == list(range(100))
    with pytest.raises(DataError, match="val_fraction"):
        carve_validation(100, 1.0, seed=0)


def test_test_labels_cannot_influence_the_chosen_lr(monkeypatch):
    # Noisy features so the grid's scores differ; then score the same run against the true test
    # labels, a permutation of them, and adversarial labels: the choice must not move.
    f_train, y_train = clustered_features(seed=1, spread=3.0)
    f_test, y_test = clustered_features(n_per_class=20, seed=2, spread=3.0)
    lrs = [1e-4, 0.003, 0.3]
    seen = []
    real_fit = linear_mod.fit_probes

    def spy(features, labels, *args, **kwargs):
        seen.append(labels.clone())
        return real_fit(features, labels, *args, **kwargs)

    monkeypatch.setattr(linear_mod, "fit_probes", spy)
    base = linear_probe(f_train, y_train, f_test, y_test, lrs, settings=FAST)
    permuted = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))]
    adversarial = (y_test + 1) % 4
    for labels in (permuted, adversarial):
        other = linear_probe(f_train, y_train, f_test, labels, lrs, settings=FAST)
        assert other.lr == base.lr and other.val_top1 == base.val_top1
    assert linear_probe(f_train, y_train, f_test, adversarial, lrs, settings=FAST).top1 < base.top1
    # every probe ever fitted saw training labels only
    assert len(seen) == 4 * 2  # per linear_probe: one grid pass, one final fit
    train_multiset = sorted(y_train.tolist())
    for labels in seen:
        assert len(labels) <= len(y_train)
        assert set(labels.tolist()) <= set(train_multiset)
    assert len(set(base.val_top1.values())) > 1  # the grid really discriminates


def test_select_lr_is_a_function_of_training_data_only():
    f_train, y_train = clustered_features(seed=3, spread=3.0)
    a = select_lr(f_train, y_train, [0.01, 1.0], settings=FAST)
    b = select_lr(f_train, y_train, [0.01, 1.0], settings=FAST)
    assert a == b
    changed = select_lr(f_train, y_train.roll(7), [0.01, 1.0], settings=FAST)
    assert changed[1] != a[1]  # training labels do matter


def test_sample_per_class_is_balanced_and_seeded():
    labels = torch.arange(5).repeat(30)
    idx = sample_per_class(labels, 4, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [4] * 5
    assert torch.equal(idx, sample_per_class(labels, 4, seed=0))
    assert not torch.equal(idx, sample_per_class(labels, 4, seed=1))
    with pytest.raises(DataError, match="class 0 has 30 training items; 31-shot"):
        sample_per_class(labels, 31, seed=0)


def test_fewshot_gets_better_with_more_shots_and_reports_spread():
    f_train, y_train = clustered_features(n_per_class=40, seed=4, spread=3.0)
    f_test, y_test = clustered_features(n_per_class=50, seed=4, spread=3.0)
    results, _ = fewshot_evaluate(f_train, y_train, f_test, y_test, [1, 10], seeds=[0, 1, 2, 3])
    one, ten = results
    assert one.shots == 1 and ten.shots == 10 and len(one.per_seed) == 4
    assert ten.mean > one.mean and ten.mean > 0.8
    assert one.std > 0
    assert abs(one.mean - sum(one.per_seed) / 4) < 1e-9


def test_grid_trained_together_equals_each_rate_alone():
    f, y = clustered_features(n_per_class=30, seed=5, spread=2.0)
    together = fit_probes(f, y, 4, [0.01, 0.5], FAST)
    for lr, probe in zip([0.01, 0.5], together, strict=True):
        alone = fit_probe(f, y, 4, lr, FAST)
        assert torch.allclose(alone.head.weight, probe.head.weight, atol=1e-6)
        assert torch.allclose(alone.bn.running_mean, probe.bn.running_mean)
    assert not torch.allclose(together[0].head.weight, together[1].head.weight)


def test_fewshot_shows_progress_per_probe(capsys):
    """Few-shot fits shots x seeds probes: it says how far it is (on stderr), unless asked not."""
    from mimkit.eval.fewshot import fewshot_evaluate

    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(40, 8, generator=g), torch.arange(4).repeat(10)
    fewshot_evaluate(feats, labels, feats, labels, shots=(1, 2), seeds=(0, 1))
    assert "few-shot probes" in capsys.readouterr().err
    fewshot_evaluate(feats, labels, feats, labels, shots=(1,), seeds=(0,), progress=False)
    assert "few-shot probes" not in capsys.readouterr().err
