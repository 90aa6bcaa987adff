"""Multi-process training: 2 gloo processes follow 1 process with the same global batch."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model_overrides
from safetensors.torch import load_file
from test_data import make_idx_folder

from mimkit.config import load_config
from mimkit.data.sources import TrainSource
from mimkit.errors import ConfigError
from mimkit.train.distributed import DistContext, env_context
from mimkit.train.loop import draw_mask, prepare_batch, pretrain
from mimkit.train.state import TrainerState

CONFIG = "configs/fmnist_mae_tiny.yaml"


def overrides(data, out, batch_size, *extra):
    return tiny_model_overrides(out) + [
        "data.source=idx",
        f"data.path={data}",
        f"train.batch_size={batch_size}",
        "train.epochs=2",
        "train.log_every=1",
        "eval.knn=false",
        # fp32: the ranks' partial results differ from one process's only in summation order,
        # which bf16 (train.amp=auto on CPUs with bf16 hardware) would round far above 1e-5
        "train.amp=off",
        *extra,
    ]


def torchrun(nproc, args):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "mimkit.cli",
        "pretrain",
        CONFIG,
        *args,
        "--no-eval",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if json.loads(x)["event"] == "train"]


def assert_same_weights(a_dir, b_dir, atol):
    a = load_file(a_dir / "checkpoint" / "model.safetensors")
    b = load_file(b_dir / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_two_gloo_processes_follow_one_process_with_the_same_global_batch(tmp_path):
    data = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)
    # one process, global batch 16: 4 steps per epoch, 8 in all
    one = pretrain(load_config(CONFIG, overrides(data, tmp_path / "one", 16)))
    assert one.steps == 8
    # two processes x 8 rows = the same global batch of 16
    done = torchrun(2, overrides(data, tmp_path / "two", 8))
    assert "checkpoint:" in done.stdout and done.stdout.count("checkpoint:") == 1  # rank 0 only
    ref, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(ref) == len(two) == 8
    torch.testing.assert_close(torch.tensor(two), torch.tensor(ref), rtol=1e-5, atol=1e-6)
    assert ref[0] != ref[-1]  # the trajectory moves, so agreeing means something
    assert_same_weights(tmp_path / "one", tmp_path / "two", atol=1e-5)
    state = json.loads((tmp_path / "two" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_batch"] == 16 and state["step"] == 8


@pytest.mark.slow
def test_fsdp_checkpoints_resume_across_world_sizes_and_sharding(tmp_path):
    data = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)
    pretrain(load_config(CONFIG, overrides(data, tmp_path / "one", 16)))
    ref = losses(tmp_path / "one")
    # 1 process for 3 steps, then FSDP on 2 processes to the end: FSDP loads a whole
    # checkpoint into shards, trains, and gathers model and optimiser back for rank 0 to write
    pretrain(load_config(CONFIG, overrides(data, tmp_path / "moved", 16, "train.max_steps=3")))
    torchrun(2, overrides(data, tmp_path / "moved", 8, "train.parallel=fsdp"))
    assert losses(tmp_path / "moved") == pytest.approx(ref, rel=1e-5)
    assert_same_weights(tmp_path / "one", tmp_path / "moved", atol=1e-5)
    a = load_file(tmp_path / "one" / "checkpoint" / "optimizer.safetensors")
    b = load_file(tmp_path / "moved" / "checkpoint" / "optimizer.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-4, msg=key)


def test_ranks_read_disjoint_rows_of_the_same_global_batches(tmp_path):
    data = make_idx_folder(tmp_path / "idx", n_train=40, n_test=8)
    cfg = load_config(CONFIG, overrides(data, tmp_path / "x", 4))
    source = TrainSource(cfg.data, 1, (28, 28), seed=3)
    whole = [b.images for b in source.batches(1, 8)]
    parts = [[b.images for b in source.batches(1, 4, shard=(r, 2))] for r in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 5
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), batch)


def test_augmentation_and_masks_of_a_row_do_not_depend_on_the_split(tmp_path):
    data = make_idx_folder(tmp_path / "idx", n_train=16, n_test=8)
    cfg = load_config(CONFIG, overrides(data, tmp_path / "x", 4))
    from mimkit.objectives.mae import build_mae

    model = build_mae(cfg.model, cfg.masking, cfg.method)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)

    def draw(rows):
        gen = torch.Generator().manual_seed(5)
        x = prepare_batch(images[rows], cfg, torch.device("cpu"), gen, rows, 8)
        return x, draw_mask(model, x, gen, rows, 8)

    x_all, m_all = draw(slice(0, 8))
    for rows in (slice(0, 4), slice(4, 8)):
        x, m = draw(rows)
        torch.testing.assert_close(x, x_all[rows])
        assert torch.equal(m.ids_keep, m_all.ids_keep[rows])
        assert torch.equal(m.ids_restore, m_all.ids_restore[rows])


def test_resume_position_carries_over_to_another_global_batch():
    # saved at micro-step 3 of an epoch with global batch 16 (48 images seen)
    state = TrainerState(epoch=1, micro_step=3, step=7, global_batch=16)
    state.carry_over(32, micro_per_epoch=8, accum=1)
    assert state == TrainerState(epoch=1, micro_step=2, step=8 + 2, global_batch=32)
    same = TrainerState(epoch=1, micro_step=3, step=7, global_batch=16)
    same.carry_over(16, micro_per_epoch=4, accum=1)
    assert same == TrainerState(epoch=1, micro_step=3, step=7, global_batch=16)
    # past the last whole step of the epoch: the next epoch starts
    late = TrainerState(epoch=0, micro_step=7, step=7, global_batch=16)
    late.carry_over(32, micro_per_epoch=3, accum=1)
    assert late == TrainerState(epoch=1, micro_step=0, step=3, global_batch=32)


def test_env_context_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = env_context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (2, 4, 0, False)
    assert ctx.rows(8) == slice(16, 24)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4 is not within WORLD_SIZE=4"):
        env_context()
    assert DistContext().rows(8) == slice(0, 8)
