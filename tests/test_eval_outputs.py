"""Evaluation outputs survive training updates, are named by their settings, and old ones are
still read; `mimkit tome` is never silent."""

import json

from conftest import tiny_model_overrides
from eval_helpers import make_learnable_idx

from mimkit.cli import main
from mimkit.compress import tradeoff
from mimkit.eval import cache as cache_mod


def _pretrain(tmp_path, data, epochs):
    overrides = tiny_model_overrides(tmp_path / "run") + [
        "data.source=idx", f"data.path={data}", "train.batch_size=32", f"train.epochs={epochs}",
        "eval.knn=false", "eval.reconstruction_images=0",
    ]  # fmt: skip
    assert main(["pretrain", "configs/fmnist_mae_tiny.yaml", *overrides]) == 0


def test_eval_outputs_survive_resuming_the_run(tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=16)
    run = tmp_path / "run"
    _pretrain(tmp_path, data, epochs=1)
    assert main(["eval", "knn", str(run), "-k", "5"]) == 0
    assert main(["tome", str(run), "--r", "0", "1", "--train-limit", "32"]) == 0
    outputs = sorted(p.relative_to(run) for p in (run / "eval").rglob("*") if p.is_file())
    assert any(p.name == "eval_knn_k-5.json" for p in outputs)
    assert any(p.parent.name == "features" for p in outputs)
    assert any(p.name == "tome.json" for p in outputs)
    _pretrain(tmp_path, data, epochs=2)  # resumes: checkpoint/ is replaced
    assert "steps 4" in capsys.readouterr().out
    kept = sorted(p.relative_to(run) for p in (run / "eval").rglob("*") if p.is_file())
    assert kept == outputs


def test_results_are_named_by_their_settings_and_record_them(tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=16)
    run = tmp_path / "run"
    _pretrain(tmp_path, data, epochs=1)
    assert main(["eval", "knn", str(run)]) == 0
    assert main(["eval", "knn", str(run), "--pool", "avg", "--block", "1", "--train-limit", "40",
                 "--test-limit", "8"]) == 0  # fmt: skip
    default = json.loads((run / "eval" / "eval_knn.json").read_text())
    other = json.loads(
        (run / "eval" / "eval_knn_pool-avg_block-1_train-40_test-8.json").read_text()
    )
    assert (default["train_items"], default["test_items"]) == (64, 16)
    assert (other["train_items"], other["test_items"], other["block"]) == (40, 8, 1)
    assert other["settings"]["pool"] == "avg" and other["settings"]["test_limit"] == 8
    assert default["settings"]["pool"] is None  # the checkpoint's own pooling
    assert default["pool"] == "avg"  # ... recorded resolved


def test_features_cached_where_0_1_kept_them_are_still_read(tmp_path, monkeypatch, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=16)
    run = tmp_path / "run"
    _pretrain(tmp_path, data, epochs=1)
    assert main(["eval", "knn", str(run)]) == 0
    first = json.loads((run / "eval" / "eval_knn.json").read_text())["top1"]
    (run / "eval" / "features").rename(run / "checkpoint" / "features")  # the old location

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed although they are cached")

    monkeypatch.setattr(cache_mod, "extract_features", no_extraction)
    assert main(["eval", "knn", str(run)]) == 0
    assert json.loads((run / "eval" / "eval_knn.json").read_text())["top1"] == first
    found = cache_mod.find_eval_output(run / "checkpoint", "eval_knn.json")
    assert found == run / "eval" / "eval_knn.json"


def test_tome_shows_progress_for_every_phase(tmp_path, monkeypatch, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=16)
    run = tmp_path / "run"
    _pretrain(tmp_path, data, epochs=1)
    bars = []
    real = tradeoff.tqdm

    def recording(iterable, **kwargs):
        bars.append((kwargs["desc"], kwargs["disable"]))
        return real(iterable, **kwargs)

    monkeypatch.setattr(tradeoff, "tqdm", recording)
    capsys.readouterr()
    assert main(["tome", str(run), "--r", "0", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tome: timing r=0, 2")  # said before the work starts
    descs = [d for d, disabled in bars if not disabled]
    assert descs[0].startswith("timing r=0,2")
    assert [d for d in descs if "features" in d] == [
        "r=0 (1/2) train features", "r=0 (1/2) test features",
        "r=2 (2/2) train features", "r=2 (2/2) test features",
    ]  # fmt: skip
