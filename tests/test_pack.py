"""Packed datasets (`mimkit data pack`, data.source=packed) and HF datasets on disk (data.source=hf).

A pack trains on exactly the batches its folder would (same seed: bit-identical weights); the
stream order (data.shuffle_buffer) is a seeded permutation whose resume is bit-exact; ranks and
DataLoader workers read disjoint samples; bad shards are counted skips or one-line errors.
"""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model_overrides
from PIL import Image
from safetensors.torch import load_file

from mimkit.cli.main import main
from mimkit.config import load_config
from mimkit.data.config import DataConfig
from mimkit.data.shards import PackedShards, stream_order
from mimkit.data.sources import TrainSource
from mimkit.errors import ConfigError, DataError
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.loop import pretrain

pytest.importorskip("webdataset")
N = 48  # 24 per class; batch 8 -> 6 steps per epoch


def make_folder(root, n=N, side=28):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(image folder, its pack in 5 shards of 10 samples), made by the command line."""
    tmp = tmp_path_factory.mktemp("pack")
    folder = make_folder(tmp / "images")
    args = ["data", "pack", str(folder), str(tmp / "pack"), "--size", "28", "--channels", "1"]
    assert main(args + ["--shard-samples", "10"]) == 0
    return folder, tmp / "pack"


def run_cfg(tmp_path, out, source, path, *extra):
    overrides = tiny_model_overrides(tmp_path / out) + [
        f"data.source={source}",
        f"data.path={path}",
        "data.mean=[0.5]",
        "data.std=[0.29]",
        "train.batch_size=8",
        "train.epochs=2",
        "train.log_every=1",
        "eval.knn=false",
        *extra,
    ]
    return load_config("configs/fmnist_mae_tiny.yaml", overrides)


def losses(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"]) for x in lines if x["event"] == "train"]


def assert_same_weights(a, b):
    a, b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pack_writes_the_folder_in_its_order_with_labels_and_stats(packed):
    folder, pack = packed
    manifest = json.loads((pack / "pack.json").read_text())
    assert manifest["count"] == N and manifest["classes"] == ["c0", "c1"]
    assert [s["samples"] for s in manifest["shards"]] == [10, 10, 10, 10, 8]
    shards = PackedShards(pack, 1, (28, 28))
    source = TrainSource(DataConfig(source="folder", path=str(folder)), 1, (28, 28), seed=0)
    for i in (0, 17, N - 1):
        image, label, ok = shards[i]
        want, want_label, _ = source.dataset[i]
        assert ok and label == want_label and torch.equal(image, want)
    pixels = torch.stack([shards[i][0] for i in range(N)]).double() / 255
    assert manifest["mean"][0] == pytest.approx(pixels.mean().item(), abs=1e-4)
    assert manifest["std"][0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-4)


def test_pack_then_pretrain_is_the_folder_run_bit_for_bit(tmp_path, packed):
    folder, pack = packed
    from_folder = pretrain(run_cfg(tmp_path, "folder", "folder", folder))
    from_pack = pretrain(run_cfg(tmp_path, "pack", "packed", pack))
    assert from_pack.steps == from_folder.steps == 12
    assert losses(tmp_path / "pack") == losses(tmp_path / "folder")
    assert_same_weights(from_pack.checkpoint, from_folder.checkpoint)


def test_a_yaml_run_on_a_pack_without_statistics_takes_the_packs(tmp_path, packed, capsys):
    from mimkit.cli.pretrain import fill_folder_stats

    _, pack = packed
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"data: {{source: packed, path: {pack}}}\n")
    cfg = load_config(yaml_file, ["model.img_size=28", "model.in_chans=1", "model.patch_size=7"])
    assert cfg.data.mean == [0.2860]  # Fashion-MNIST's, the silent default this guards against
    fill_folder_stats(cfg, str(yaml_file), [])
    manifest = json.loads((pack / "pack.json").read_text())
    assert (cfg.data.mean, cfg.data.std) == (manifest["mean"], manifest["std"])
    assert "from " + str(pack) + "/pack.json" in capsys.readouterr().out


def test_stream_order_is_a_seeded_permutation_that_a_killed_run_resumes_exactly(
    tmp_path, packed, monkeypatch
):
    _, pack = packed
    shards = PackedShards(pack, 1, (28, 28))
    order = shards.order(N, seed=0, epoch=0, buffer=12)
    assert sorted(order.tolist()) == list(range(N))
    assert torch.equal(order, shards.order(N, seed=0, epoch=0, buffer=12))
    assert not torch.equal(order, shards.order(N, seed=0, epoch=1, buffer=12))
    extra = ("data.shuffle_buffer=12", "train.accum_steps=2", "train.save_every_steps=1")
    straight = pretrain(run_cfg(tmp_path, "straight", "packed", pack, *extra))
    # the process dies in the 5th micro-batch (mid-epoch, after step 2 was saved); then the
    # same command again
    real_forward = MaskedAutoencoder.forward
    calls = {"n": 0}

    def crash_in_micro_batch_5(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(MaskedAutoencoder, "forward", crash_in_micro_batch_5)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain(run_cfg(tmp_path, "resumed", "packed", pack, *extra))
    saved = json.loads((tmp_path / "resumed" / "checkpoint" / "trainer_state.json").read_text())
    assert (saved["epoch"], saved["micro_step"], saved["step"]) == (0, 4, 2)
    monkeypatch.setattr(MaskedAutoencoder, "forward", real_forward)
    resumed = pretrain(run_cfg(tmp_path, "resumed", "packed", pack, *extra))
    assert straight.steps == resumed.steps == 6
    assert_same_weights(resumed.checkpoint, straight.checkpoint)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_a_shuffle_buffer_emits_each_item_within_buffer_places_of_the_stream():
    # one shard: the stream is 0..n-1; item i (i >= K) enters the buffer only after output place
    # i - K is emitted, so it cannot come out before place i - K + 1
    n, k = 200, 16
    order = stream_order(np.zeros(n, dtype=np.int64), 1, seed=3, epoch=0, buffer=k).tolist()
    assert sorted(order) == list(range(n))
    place = {item: p for p, item in enumerate(order)}
    assert all(place[i] >= i - k + 1 for i in range(n))
    assert order[: n - k] != list(range(n - k))  # it does shuffle
    assert stream_order(np.zeros(n, dtype=np.int64), 1, 3, 0, buffer=1).tolist() == list(range(n))


def test_ranks_and_workers_read_disjoint_rows_of_the_same_global_batches(packed):
    _, pack = packed
    cfg = DataConfig(source="packed", path=str(pack), shuffle_buffer=12)
    whole = TrainSource(cfg, 1, (28, 28), seed=5)
    cfg_workers = DataConfig(source="packed", path=str(pack), shuffle_buffer=12, num_workers=2)
    parted = TrainSource(cfg_workers, 1, (28, 28), seed=5)
    one = list(whole.batches(1, 8))
    ranks = [list(parted.batches(1, 4, shard=(r, 2))) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == N // 8
    for b, r0, r1 in zip(one, *ranks, strict=True):
        assert torch.equal(torch.cat([r0.images, r1.images]), b.images)
        assert torch.equal(torch.cat([r0.labels, r1.labels]), b.labels)
    # from the second batch on, resumed reading starts at the exact sample
    later = list(whole.batches(1, 8, start_step=2))
    assert all(torch.equal(a.images, b.images) for a, b in zip(later, one[2:], strict=True))


def test_png_encoding_reads_the_same_images(tmp_path, packed):
    folder, pack = packed
    assert main(["data", "pack", str(folder), str(tmp_path / "png"), "--size", "28",
                 "--channels", "1", "--encoding", "png"]) == 0  # fmt: skip
    npy, png = PackedShards(pack, 1, (28, 28)), PackedShards(tmp_path / "png", 1, (28, 28))
    assert all(torch.equal(npy[i][0], png[i][0]) for i in range(N))


def test_the_shards_are_plain_webdataset_tars(packed):
    import io

    import webdataset as wds

    _, pack = packed
    urls = [str(p) for p in sorted(pack.glob("shard-*.tar"))]
    shards = PackedShards(pack, 1, (28, 28))
    keys = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        i = int(sample["__key__"])
        image = torch.from_numpy(np.load(io.BytesIO(sample["npy"]), allow_pickle=False))
        assert torch.equal(image, shards[i][0]) and int(sample["cls"]) == shards[i][1]
        keys.append(i)
    assert keys == list(range(N))


def copy_pack(pack, to):
    to.mkdir()
    for p in pack.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def test_a_truncated_shard_is_a_counted_skip_or_a_one_line_error(tmp_path, packed):
    _, pack = packed
    bad = copy_pack(pack, tmp_path / "bad")
    shard = bad / "shard-000001.tar"
    cut = int(PackedShards(pack, 1, (28, 28)).index[12, 1]) + 100  # inside its 3rd sample
    shard.write_bytes(shard.read_bytes()[:cut])
    shards = PackedShards(bad, 1, (28, 28))
    assert shards.skipped == {"truncated_shard": 8}
    assert [shards[i][2] for i in range(10, 20)] == [True] * 2 + [False] * 8
    result = pretrain(run_cfg(tmp_path, "run", "packed", bad, "train.max_steps=2"))
    end = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["skipped_items"] == {"truncated_shard": 8} and result.corrupt_skipped > 0
    (bad / "shard-000002.tar").unlink()
    with pytest.raises(DataError, match=rf"shard-000001.tar: shard truncated \({cut} of 71680 bytes\)"):
        PackedShards(bad, 1, (28, 28), on_bad="fail")
    assert PackedShards(bad, 1, (28, 28)).skipped == {"truncated_shard": 8, "missing_shard": 10}


def test_a_corrupt_sample_is_skipped_and_counted(tmp_path, packed):
    _, pack = packed
    bad = copy_pack(pack, tmp_path / "bad")
    shards = PackedShards(bad, 1, (28, 28))
    _, offset, _, _ = shards.index[3].tolist()
    with open(bad / "shard-000000.tar", "r+b") as f:  # the .npy header of sample 3 overwritten
        f.seek(offset)
        f.write(b"garbage!")
    shards = PackedShards(bad, 1, (28, 28))
    assert shards[3][2] is False and shards[4][2] is True
    with pytest.raises(DataError, match=r"sample 3: cannot decode"):
        PackedShards(bad, 1, (28, 28), on_bad="fail")[3]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("shards"), r"pack.json: missing field 'shards'"),
        (lambda m: m.update(count="many"), r"pack.json: field 'count' should be a int"),
        (lambda m: m.update(count=47), r"index.npy: index of type int64 and shape \(48, 4\); expected int64 \(47, 4\)"),
        (lambda m: m.update(encoding="jpeg"), r"field 'encoding' is 'jpeg'"),
    ],
)  # fmt: skip
def test_a_missing_or_wrong_pack_json_field_is_one_line(tmp_path, packed, edit, message):
    _, pack = packed
    bad = copy_pack(pack, tmp_path / "bad")
    manifest = json.loads((bad / "pack.json").read_text())
    edit(manifest)
    (bad / "pack.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message):
        PackedShards(bad, 1, (28, 28))


def test_pack_and_packed_source_refuse_bad_input_in_one_line(tmp_path, packed, capsys):
    folder, pack = packed
    assert main(["data", "pack", str(tmp_path / "nowhere"), str(tmp_path / "o"), "--size", "28"]) == 2
    assert main(["data", "pack", str(folder), str(pack), "--size", "28", "--channels", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].endswith("nowhere: image folder not found")
    assert err[1].endswith("already holds a pack; choose another OUT or delete it")
    with pytest.raises(DataError, match=r"no pack.json; not a mimkit pack"):
        PackedShards(folder, 1, (28, 28))
    with pytest.raises(DataError, match=r"packed as 1-channel 28x28 images but the model takes 3-channel 32x32"):
        PackedShards(pack, 3, (32, 32))
    with pytest.raises(ConfigError, match=r"data.shuffle_buffer applies to data.source=packed only"):
        DataConfig(source="folder", shuffle_buffer=8).check()


# ---- Hugging Face datasets on disk -----------------------------------------------------------


def hf_dataset(folder):
    datasets = pytest.importorskip("datasets")
    files = sorted(folder.rglob("*.png"))
    images = [Image.open(f) for f in files]
    labels = [int(f.parent.name[1:]) for f in files]
    ds = datasets.Dataset.from_dict({"image": images, "label": labels})
    return ds.cast_column("image", datasets.Image())


def test_hf_dataset_on_disk_gives_the_folders_batches(tmp_path, packed):
    folder, _ = packed
    ds = hf_dataset(folder)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "train-00000.parquet"))
    want = list(TrainSource(DataConfig(source="folder", path=str(folder)), 1, (28, 28), 7).batches(0, 8))
    for path in (tmp_path / "saved", tmp_path / "train-00000.parquet"):
        got = list(TrainSource(DataConfig(source="hf", path=str(path)), 1, (28, 28), 7).batches(0, 8))
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_pack_reads_an_hf_dataset_and_hf_bad_input_is_one_line(tmp_path, packed):
    datasets = pytest.importorskip("datasets")
    folder, pack = packed
    hf_dataset(folder).save_to_disk(str(tmp_path / "saved"))
    assert main(["data", "pack", str(tmp_path / "saved"), str(tmp_path / "p"), "--size", "28",
                 "--channels", "1", "--shard-samples", "10"]) == 0  # fmt: skip
    assert (tmp_path / "p" / "index.npy").read_bytes() == (pack / "index.npy").read_bytes()
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match=r"text: no image column .* columns are \['text'\]"):
        TrainSource(DataConfig(source="hf", path=str(tmp_path / "text")), 1, (28, 28), 0)
    with pytest.raises(DataError, match=r"neither a save_to_disk folder"):
        TrainSource(DataConfig(source="hf", path=str(folder)), 1, (28, 28), 0)


@pytest.mark.slow
def test_a_sigkilled_pretrain_process_on_shards_resumes_at_the_exact_sample(tmp_path, packed):
    """A real `mimkit pretrain` process, SIGKILLed inside its step-2 checkpoint write, reading
    the shards through a DataLoader worker in stream order; the same command again ends
    bit-identical to a run that was never killed."""
    import os
    import signal
    import subprocess
    import sys

    _, pack = packed
    extra = ["data.shuffle_buffer=12", "data.num_workers=1", "train.save_every_steps=2"]
    straight = pretrain(run_cfg(tmp_path, "straight", "packed", pack, *extra))
    overrides = [
        *tiny_model_overrides(tmp_path / "killed"), "data.source=packed", f"data.path={pack}",
        "data.mean=[0.5]", "data.std=[0.29]", "train.batch_size=8", "train.epochs=2",
        "train.log_every=1", "eval.knn=false", *extra,
    ]  # fmt: skip
    args = [sys.executable, "-m", "mimkit.cli", "pretrain", "configs/fmnist_mae_tiny.yaml",
            *overrides, "--no-eval"]  # fmt: skip
    env = {**os.environ, "MIMKIT_TEST_KILL_AT": "between_renames@2"}
    killed = subprocess.run(args, capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run(args, capture_output=True, text=True)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert_same_weights(tmp_path / "killed" / "checkpoint", straight.checkpoint)
    assert losses(tmp_path / "killed")[-1] == losses(tmp_path / "straight")[-1]
