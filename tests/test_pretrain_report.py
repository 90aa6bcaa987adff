"""The end-of-run report is proportionate to the run and shares its features with `mimkit eval`;
re-running a finished run reports its real final loss."""

import json

from conftest import tiny_model_overrides
from eval_helpers import make_learnable_idx

from mimkit.cli import main
from mimkit.eval import cache as cache_mod
from mimkit.report import knn_sizes


def test_knn_sizes_follow_the_run_budget():
    assert knn_sizes(None, 2048, 60000, 10000) == (2048, 1000)  # the README's quick try
    assert knn_sizes(None, 702 * 256, 60000, 10000) == (60000, 10000)  # the demo: all of it
    assert knn_sizes(None, 100, 60000, 10000) == (1000, 1000)  # never below the minimum
    assert knn_sizes(None, 24000, 60000, 10000) == (24000, 4000)
    assert knn_sizes(2000, 10**6, 60000, 10000) == (2000, 10000)  # the config decides
    assert knn_sizes(None, 10**6, 64, 16) == (64, 16)


def _overrides(tmp_path, data, extra=()):
    return tiny_model_overrides(tmp_path / "run") + [
        "data.source=idx", f"data.path={data}", "train.batch_size=16", "train.epochs=1",
        "eval.reconstruction_images=0", *extra,
    ]  # fmt: skip


def test_report_is_announced_scaled_and_cached_for_eval(tmp_path, capsys, monkeypatch):
    data = make_learnable_idx(tmp_path / "idx", n_train=1200, n_test=400)
    extra = ["data.limit=32", "train.max_steps=2"]  # 2 steps x 16: 32 images seen
    assert (
        main(["pretrain", "configs/fmnist_mae_tiny.yaml", *_overrides(tmp_path, data, extra)]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    announce = next(i for i, line in enumerate(out) if line.startswith("kNN report:"))
    assert "bank 1,000 / 1,200, test 1,000" not in out[announce]
    assert "bank 1,000 / 1,200, test 400 / 400 (scaled to the 32 images trained on" in out[announce]
    assert announce < next(
        i for i, line in enumerate(out) if line.startswith("kNN top-1 pretrained")
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["knn_bank"], results["knn_test"]) == (1000, 400)
    hint = next(line for line in out if line.startswith("features cached in"))
    assert "--train-limit 1000 --test-limit 400" in hint

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed although the report cached them")

    monkeypatch.setattr(cache_mod, "extract_features", no_extraction)
    run = str(tmp_path / "run")
    for extra_flag in ([], ["--random-init"]):
        args = ["eval", "knn", run, "--train-limit", "1000", "--test-limit", "400", *extra_flag]
        assert main(args) == 0
    saved = json.loads(
        (tmp_path / "run" / "eval" / "eval_knn_train-1000_test-400.json").read_text()
    )
    assert abs(saved["top1"] - results["knn_pretrained"]) < 1e-9


def test_rerunning_a_finished_run_reports_its_final_loss(tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=16)
    args = [
        "pretrain",
        "configs/fmnist_mae_tiny.yaml",
        *_overrides(tmp_path, data, ["eval.knn=false"]),
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0  # resumes a run that has nothing left to train
    again = capsys.readouterr().out
    assert "nan" not in again and "already finished" in again
    loss = first.split("final loss ")[1].split(")")[0]
    assert f"final loss {loss};" in again
