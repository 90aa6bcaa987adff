"""Nothing lost: interrupted saves, signals, crashes and non-finite streaks (docs/checkpoints.md).

The fast tests here reproduce each interruption in-process (the on-disk state a kill leaves,
a signal sent to this process, an exception mid-run); the `slow` ones SIGKILL and SIGTERM real
`mimkit pretrain` processes, at random moments and inside the checkpoint write (through the
`MIMKIT_TEST_KILL_AT` hook), and check that the resumed run ends bit-identical.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import run_cfg, weights

from mimkit.errors import CheckpointError, ConfigError, RunInterrupted, TrainingHalted
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.checkpoint import recover_checkpoint
from mimkit.train.lock import run_lock
from mimkit.train.loop import pretrain

STEPS = 8  # 32 items, batch 8, 2 epochs


def cfg(tmp_path, out, *extra):
    return run_cfg(tmp_path, out, "data.limit=32", *extra)


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must match."""
    tmp = tmp_path_factory.mktemp("straight")
    result = pretrain(cfg(tmp, "run", "train.save_every_steps=3"))
    assert result.steps == STEPS
    return result.checkpoint


def test_a_kill_between_the_two_renames_resumes_from_the_old_checkpoint(tmp_path, straight):
    pretrain(cfg(tmp_path, "run", "train.max_steps=3"))
    run = tmp_path / "run"
    # what a kill between `checkpoint -> .checkpoint.old` and `tmp -> checkpoint` leaves
    (run / "checkpoint").rename(run / ".checkpoint.old")
    (run / ".checkpoint.tmp-dead").mkdir()
    (run / ".checkpoint.tmp-dead" / "model.safetensors").write_bytes(b"half written")
    resumed = pretrain(cfg(tmp_path, "run", "train.save_every_steps=3"))
    assert resumed.steps == STEPS
    assert_same_weights(resumed.checkpoint, straight)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []
    # resumed at step 3, not started over: one start line, train lines 1..8 once each
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines].count("start") == 1
    assert [x["step"] for x in lines if x["event"] == "train"] == list(range(1, STEPS + 1))


def test_recovery_notes_and_a_stale_old_copy_beside_a_newer_checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (tmp_path / ".checkpoint.old").mkdir()
    (tmp_path / ".checkpoint.trash-1234").mkdir()
    notes = recover_checkpoint(folder)
    assert any(".checkpoint.old" in n for n in notes) and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_sigterm_saves_then_stops_and_the_resumed_run_is_bit_identical(
    tmp_path, straight, monkeypatch
):
    real_forward = MaskedAutoencoder.forward
    calls = {"n": 0}

    def forward_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(MaskedAutoencoder, "forward", forward_then_signal)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match=r"stopped by SIGTERM at step 3; checkpoint saved"):
        pretrain(cfg(tmp_path, "run", "train.save_every_steps=3"))
    assert signal.getsignal(signal.SIGTERM) is handler  # handlers restored
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3
    monkeypatch.setattr(MaskedAutoencoder, "forward", real_forward)
    resumed = pretrain(cfg(tmp_path, "run", "train.save_every_steps=3"))
    assert resumed.steps == STEPS
    assert_same_weights(resumed.checkpoint, straight)


def test_step_interval_saves_keep_the_steps_since_the_last_epoch(tmp_path, straight, monkeypatch):
    real_forward = MaskedAutoencoder.forward
    calls = {"n": 0}

    def crash_at_step_7(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("the machine went away")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(MaskedAutoencoder, "forward", crash_at_step_7)
    with pytest.raises(RuntimeError, match="went away"):
        pretrain(cfg(tmp_path, "run", "train.save_every_steps=3"))
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6  # saved mid-epoch (4 steps an epoch), not only at epoch ends
    monkeypatch.setattr(MaskedAutoencoder, "forward", real_forward)
    resumed = pretrain(cfg(tmp_path, "run", "train.save_every_steps=3"))
    assert_same_weights(resumed.checkpoint, straight)


def nan_after(monkeypatch, clean_calls):
    real_forward = MaskedAutoencoder.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > clean_calls:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedAutoencoder, "forward", forward)


def test_a_nonfinite_streak_never_overwrites_the_last_good_checkpoint(tmp_path, monkeypatch):
    pretrain(cfg(tmp_path, "run", "train.epochs=1"))  # one healthy epoch, saved
    good = weights(tmp_path / "run" / "checkpoint")
    # resumed: 2 healthy steps, then NaN; the epoch-end save comes inside the streak
    nan_after(monkeypatch, 2)
    with pytest.raises(TrainingHalted) as halted:
        pretrain(cfg(tmp_path, "run", "train.epochs=3", "train.max_nonfinite=4"))
    last_good = tmp_path / "run" / "last_good"
    assert f"the last good checkpoint is in {last_good}" in str(halted.value)
    kept = weights(last_good)
    assert all(torch.equal(good[k], kept[k]) for k in good)
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["clean"] is False and state["epoch"] == 2


def test_a_halt_before_any_save_names_no_missing_checkpoint(tmp_path, monkeypatch):
    nan_after(monkeypatch, 0)
    with pytest.raises(TrainingHalted) as halted:
        pretrain(cfg(tmp_path, "run", "train.max_nonfinite=2"))
    message = str(halted.value)
    assert "no checkpoint without non-finite steps was saved" in message
    assert "last good checkpoint is in" not in message


def test_a_second_writer_is_refused_and_a_stale_lock_reported(tmp_path, caplog):
    out = tmp_path / "run"
    busy = rf"out_dir {out}: another run is writing there \(PID {os.getpid()} on host"
    with run_lock(out), pytest.raises(ConfigError, match=busy):
        pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    # a lock file a SIGKILLed run left behind: its holder is gone
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 7, "host": "gone"}))
    with caplog.at_level("WARNING", logger="mimkit"):
        pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    assert "stale lock of PID 4194311 on host gone" in caplog.text


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        result = pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    finally:
        os.umask(old)
    assert result.checkpoint.stat().st_mode & 0o777 == 0o755
    assert (result.checkpoint / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "damage",
    [
        ("trainer_state.json", b"{not json"),
        ("trainer_state.json", b'{"step": "three", "optimizer": {}}'),
        ("trainer_state.json", b"[1, 2]"),
        ("rng.safetensors", b"\x00" * 40),
        ("optimizer.safetensors", b"garbage"),
    ],
)
def test_a_damaged_training_state_is_one_line(tmp_path, damage):
    pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    name, content = damage
    (tmp_path / "run" / "checkpoint" / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as err:
        pretrain(cfg(tmp_path, "run", "train.max_steps=2"))
    assert "\n" not in str(err.value)


def test_an_rng_file_with_tensors_of_the_wrong_kind_is_one_line(tmp_path):
    from safetensors.torch import save_file

    pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    rng = tmp_path / "run" / "checkpoint" / "rng.safetensors"
    save_file({"generator": torch.zeros(3, 3)}, rng)
    with pytest.raises(CheckpointError, match=r"rng\.safetensors: damaged, RNG state 'generator'"):
        pretrain(cfg(tmp_path, "run", "train.max_steps=2"))


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import mimkit.train.checkpoint as ck

    result = pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    before = (result.checkpoint / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(
        CheckpointError, match=r"no space left on the device\); the previous one is kept"
    ):
        pretrain(cfg(tmp_path, "run", "train.max_steps=2"))
    assert (result.checkpoint / "model.safetensors").read_bytes() == before
    assert [p.name for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name] == []


# ---- real processes, killed (slow) --------------------------------------------------------------


def cli_args(tmp_path, out, *extra):
    from test_data import make_idx_folder

    data = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)
    from conftest import tiny_model_overrides

    return [
        sys.executable,
        "-m",
        "mimkit.cli",
        "pretrain",
        "configs/fmnist_mae_tiny.yaml",
        *tiny_model_overrides(tmp_path / out),
        "data.source=idx",
        f"data.path={data}",
        "train.batch_size=8",
        "data.limit=32",
        "train.epochs=2",
        "train.log_every=1",
        "train.save_every_steps=3",
        "eval.knn=false",
        "--no-eval",
        *extra,
    ]


def run_cli(args, env=None, **kw):
    return subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw
    )


# CI runs one real kill; scripts/fuzz_full.sh (MIMKIT_FUZZ_FULL=1) runs them all
full_only = pytest.mark.skipif(
    not os.environ.get("MIMKIT_FUZZ_FULL"), reason="full kill suite: scripts/fuzz_full.sh"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase",
    [
        pytest.param("written", marks=full_only),
        "between_renames",
        pytest.param("renamed", marks=full_only),
    ],
)
def test_sigkill_inside_the_checkpoint_write_then_resume(tmp_path, straight, phase):
    killed = run_cli(cli_args(tmp_path, "run"), env={"MIMKIT_TEST_KILL_AT": f"{phase}@2"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(cli_args(tmp_path, "run"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert_same_weights(tmp_path / "run" / "checkpoint", straight)


@pytest.mark.slow
@full_only
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_signal_at_a_random_moment_then_resume(tmp_path, straight, sig):
    seed = int(os.environ.get("MIMKIT_KILL_SEED", "0")) + int(sig)
    delay = random.Random(seed).uniform(2.0, 8.0)  # torch import + a few steps on 2 cores
    proc = subprocess.Popen(cli_args(tmp_path, "run"), stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    resumed = run_cli(cli_args(tmp_path, "run"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "run" / "checkpoint", straight)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert not [n for n in names if ".tmp-" in n or n.endswith(".old")]
    assert load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")


def test_ctrl_c_between_the_renames_puts_the_previous_checkpoint_back(tmp_path, monkeypatch):
    import mimkit.train.checkpoint as ck

    result = pretrain(cfg(tmp_path, "run", "train.max_steps=1"))
    before = checksums(result.checkpoint)

    def interrupt(phase):
        if phase == "between_renames":
            raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_test_kill_point", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(result.checkpoint, result.model, result.cfg)
    assert checksums(result.checkpoint) == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".ch")) == []


def checksums(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
