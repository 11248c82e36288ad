"""The training engine: exact resume after SIGKILL, the NaN stop, refused checkpoints and run directories, and a
2-process torchrun (gloo) run matching the single-process run with the same global batch.

This file is also the training command of a toy task (`python tests/test_train_engine.py --out RUN ...`), so the
tests drive real subprocesses through the same CLI path every domain uses.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from ssm_core.models import register_model
from ssm_core.train import (CheckpointError, DirectoryInUseError, NonFiniteLossError, ResumeMismatchError,
                            RunExistsError, Task, TrainConfig, add_engine_args, load_checkpoint, resolve_checkpoint,
                            resolve_config, train, train_from_cli)
from ssm_core.train.checkpoint import list_checkpoints
from ssm_core.utils.dirlock import DirectoryLock

HERE = Path(__file__).resolve()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class ToyConfig:
    features: int = 8
    hidden: int = 16
    classes: int = 4
    dropout: float = 0.1


@register_model("tests.ToyModel", "the engine tests' toy classifier")
class ToyModel(nn.Module):
    """A small classifier with the structure the engine expects: a `config`, a layer stack, norms, dropout."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.features, config.hidden)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(config.hidden), nn.Linear(config.hidden, config.hidden), nn.GELU(),
                          nn.Dropout(config.dropout)) for _ in range(2))
        self.head = nn.Linear(config.hidden, config.classes)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.head(h)


class ToyData(Dataset):
    """Gaussian features labelled by a fixed random linear rule; item i depends only on (seed, i)."""

    def __init__(self, n: int, config: ToyConfig, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, config.features, generator=gen)
        rule = torch.randn(config.features, config.classes, generator=torch.Generator().manual_seed(1234))
        self.y = (self.x @ rule).argmax(-1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@dataclass
class ToyExperiment:
    model: ToyConfig = field(default_factory=ToyConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=30, batch_size=8, log_every=1,
                                                                   eval_every=10, device="cpu"))
    nan_at: int = 0  # make the loss NaN at this (1-based) optimiser step; 0 = never
    step_sleep: float = 0.0  # seconds per step, so a test can kill the process mid-run


class ToyTask(Task):
    def __init__(self, exp: ToyExperiment):
        self.exp, self.calls = exp, 0

    def build_model(self):
        return ToyModel(self.exp.model)

    def train_dataset(self):
        return ToyData(44, self.exp.model, seed=1)  # not a multiple of the batch: epochs straddle steps

    def valid_dataset(self):
        return ToyData(20, self.exp.model, seed=2)

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if model.training:
            self.calls += 1
            time.sleep(self.exp.step_sleep)
            if self.calls == self.exp.nan_at * self.exp.train.grad_accum:
                loss = loss * float("nan")
        return loss, {"accuracy": (logits.argmax(-1) == y).float().mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description="toy training command for the engine tests")
    parser.add_argument("--out", type=Path, required=True)
    add_engine_args(parser)
    args = parser.parse_args()
    exp = resolve_config(args, ToyExperiment())
    train_from_cli(ToyTask(exp), exp, args.out, resume=args.resume)


# ---------------------------------------------------------------------------------------------------------------


def run_cli(*args, check=True, launcher=(sys.executable,)):
    proc = subprocess.run([*launcher, str(HERE), *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train_losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "train/loss"}


def logged_values(run: Path) -> list[tuple[str, str, str]]:
    """metrics.csv as (step, metric, value) rows, in order, without the clock (time_s, samples/s)."""
    with open(run / "metrics.csv", newline="") as f:
        return [(r["step"], r["metric"], r["value"]) for r in csv.DictReader(f) if not r["metric"].endswith("_per_s")]


def test_sigkill_and_resume_reach_the_uninterrupted_weights_and_log(tmp_path):
    # a log line every 7 steps, checkpoints every 5: the run is killed, and resumes, in the middle of a log window
    flags = ["--steps", 30, "--checkpoint-every", 5, "--deterministic", "--device", "cpu", "--seed", 3,
             "--set", "train.log_every=7", "--set", "step_sleep=0.15"]
    run_cli("--out", tmp_path / "whole", *flags)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HERE), "--out", killed, *map(str, flags)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(step >= 10 for step, _ in list_checkpoints(killed / "checkpoints")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "killed after the end, not mid-run"
    resumed_from = list_checkpoints(killed / "checkpoints")[-1][0]
    assert 10 <= resumed_from < 30

    out = run_cli("--out", killed, *flags, "--resume")
    assert f"step {resumed_from}" in out.stderr
    whole, again = load_file(tmp_path / "whole" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert whole.keys() == again.keys()
    for name in whole:
        assert torch.equal(whole[name], again[name]), name
    assert train_losses(tmp_path / "whole") == train_losses(killed)  # same data order and dropout masks throughout
    # the log too: rows after the checkpoint dropped, the interrupted log window's sums carried in the checkpoint
    assert logged_values(tmp_path / "whole") == logged_values(killed)
    assert len(list_checkpoints(killed / "checkpoints")) == 3  # keep_last


def test_a_second_process_on_a_run_directory_is_refused_at_once_naming_the_first(tmp_path):
    import socket

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(HERE), "--out", run, "--steps", "2000", "--device", "cpu",
                             "--set", "step_sleep=0.05"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints").is_dir():  # created once the first process holds the lock
            assert proc.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        for extra in ([], ["--resume"]):
            second = run_cli("--out", run, "--steps", 4, "--device", "cpu", *extra, check=False)
            assert second.returncode == 1, second.stderr
            assert second.stderr.strip().splitlines()[-1].startswith(
                f"error: run directory {run} is in use by process {proc.pid} on {socket.gethostname()}")
        assert proc.poll() is None, "the first run was disturbed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with DirectoryLock(run):  # the kernel released the killed holder's lock
        pass


def test_the_lock_is_held_for_the_whole_training_and_released_after(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    exp = ToyExperiment()
    exp.train.steps = 2
    with DirectoryLock(run):
        with pytest.raises(DirectoryInUseError, match=rf"run directory {run} is in use by process {os.getpid()}"):
            train(ToyTask(exp), exp.train, run)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before writing anything
    seen = []

    class Watching(ToyTask):
        def loss(self, model, batch):
            if not seen:
                with pytest.raises(DirectoryInUseError):
                    DirectoryLock(run).acquire()
                seen.append(True)
            return super().loss(model, batch)

    train(Watching(exp), exp.train, run)
    assert seen
    with DirectoryLock(run):
        pass


def test_resume_refuses_changes_to_what_the_run_is_naming_old_and_new_values(tmp_path):
    run = tmp_path / "run"
    run_cli("--out", run, "--steps", 4, "--checkpoint-every", 2, "--device", "cpu")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"
              and "tensorboard" not in p.parts}
    proc = run_cli("--out", run, "--steps", 6, "--resume", "--set", "model.hidden=32", "--set",
                   "train.optim.lr=0.5", "--batch-size", 4, check=False)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    for change in ("model.hidden: 16 -> 32", "train.optim.lr: 0.001 -> 0.5", "train.batch_size: 8 -> 4"):
        assert change in message, message
    assert "train.steps" in message.split("only these may change")[1]  # it says what may change
    assert {p: p.read_bytes() for p in before} == before  # config.json, metrics.csv, weights: all untouched
    # what only changes how the run is carried out is accepted, and recorded
    proc = run_cli("--out", run, "--steps", 6, "--resume", "--set", "train.log_every=2", "--device", "cpu",
                   "--checkpoint-every", 2)
    assert "resuming with changed settings: train.log_every: 1 -> 2, train.steps: 4 -> 6\n" in proc.stderr
    import json
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6


def test_the_resumable_settings_are_listed_in_help():
    from ssm_core.train import RESUMABLE

    text = run_cli("--help").stdout
    assert "--resume" in text
    flat = " ".join(text.split())
    for name in RESUMABLE:
        assert name in flat, name
    assert "refused" in flat


@pytest.mark.parametrize("resume", [False, True])
def test_training_never_writes_into_a_file_or_a_folder_of_other_files(tmp_path, resume):
    exp = ToyExperiment()
    exp.train.steps = 1
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "config.json").write_text("my own settings\n")
    (mine / "metrics.csv").write_text("my own numbers\n")
    afile = tmp_path / "data.txt"
    afile.write_text("data\n")
    for out, message in ((mine, "holds files but no run"), (afile, "is a file, not a run directory")):
        with pytest.raises(RunExistsError, match=message):
            train(ToyTask(exp), exp.train, out, resume=resume)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.csv"]
    assert (mine / "config.json").read_text() == "my own settings\n" and afile.read_text() == "data\n"
    proc = run_cli("--out", afile, "--steps", 1, *(["--resume"] if resume else []), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "is a file" in proc.stderr


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    exp = ToyExperiment(nan_at=8)
    exp.train.checkpoint_every = 3
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 8\b") as info:
        train(ToyTask(exp), exp.train, tmp_path / "run")
    assert info.value.step == 8
    assert info.value.last_checkpoint == tmp_path / "run" / "checkpoints" / "step-00000006.ckpt"
    assert load_checkpoint(info.value.last_checkpoint)["step"] == 6  # intact: checksum verified
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert max(train_losses(tmp_path / "run")) == 7


def test_nan_stop_through_the_cli_exits_nonzero_with_the_message(tmp_path):
    proc = run_cli("--out", tmp_path / "run", "--steps", 10, "--set", "nan_at=4", check=False)
    assert proc.returncode == 1
    assert "non-finite loss nan at step 4" in proc.stderr and "No checkpoint had been written yet" in proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    exp = ToyExperiment()
    exp.train.steps, exp.train.checkpoint_every = 4, 2
    train(ToyTask(exp), exp.train, run)
    return run


def test_corrupt_truncated_and_foreign_checkpoints_are_refused(finished_run, tmp_path):
    good = finished_run / "checkpoints" / "step-00000004.ckpt"
    data = good.read_bytes()
    assert load_checkpoint(good)["step"] == 4

    corrupt = tmp_path / "corrupt.ckpt"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt: payload sha256"):
        load_checkpoint(corrupt)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"step": 4}, foreign)
    with pytest.raises(CheckpointError, match="bad header"):
        load_checkpoint(foreign)


def test_resume_refuses_a_corrupt_latest_checkpoint_instead_of_starting_over(finished_run, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(run)], check=True)
    latest = run / "checkpoints" / "step-00000004.ckpt"
    latest.write_bytes(latest.read_bytes()[:-1])
    exp = ToyExperiment()
    exp.train.steps = 6
    with pytest.raises(CheckpointError, match="step-00000004.ckpt is truncated"):
        train(ToyTask(exp), exp.train, run, resume=True)


def test_resume_refuses_a_checkpoint_of_another_model_or_data_order(finished_run, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(run)], check=True)
    exp = ToyExperiment(model=ToyConfig(hidden=32))
    with pytest.raises(CheckpointError, match=r"different model config \(hidden: checkpoint 16 vs now 32\)"):
        train(ToyTask(exp), exp.train, run, resume=True)
    exp = ToyExperiment()
    exp.train.batch_size = 4
    with pytest.raises(ResumeMismatchError, match=r"train.batch_size: 8 -> 4"):
        train(ToyTask(exp), exp.train, run, resume=True)


def test_a_used_run_directory_is_refused_without_resume(finished_run):
    before = (finished_run / "model.safetensors").read_bytes()
    exp = ToyExperiment()
    with pytest.raises(RunExistsError, match="pass --resume"):
        train(ToyTask(exp), exp.train, finished_run)
    proc = run_cli("--out", finished_run, "--steps", 2, check=False)
    assert proc.returncode == 1 and "already holds a run; pass --resume" in proc.stderr
    assert (finished_run / "model.safetensors").read_bytes() == before


def test_run_directory_contract_and_resolve_checkpoint(finished_run, tmp_path):
    import json
    for name in ("config.json", "metrics.csv", "model.safetensors", "model.json", "plots/metrics.png"):
        assert (finished_run / name).is_file(), name
    assert json.loads((finished_run / "config.json").read_text())["train"]["steps"] == 4
    assert [s for s, _ in list_checkpoints(finished_run / "checkpoints")] == [2, 4]
    assert resolve_checkpoint(finished_run) == finished_run
    assert resolve_checkpoint(finished_run / "checkpoints").name == "step-00000004.ckpt"
    with pytest.raises(CheckpointError, match="neither a finished run"):
        resolve_checkpoint(tmp_path)


def test_config_file_and_flags_resolve_in_order(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  steps: 7\n  lr_typo: 1\n")
    parser = add_engine_args(argparse.ArgumentParser())
    with pytest.raises(ValueError, match=r"unknown key 'lr_typo'"):
        resolve_config(parser.parse_args(["--config", str(cfg_file)]), ToyExperiment())
    cfg_file.write_text("train:\n  steps: 7\n  optim: {lr: 0.5, warmup_steps: 3}\nmodel: {hidden: 12}\n")
    args = parser.parse_args(["--config", str(cfg_file), "--lr", "0.25", "--set", "model.hidden=20",
                              "--batch-size", "4", "--deterministic"])
    exp = resolve_config(args, ToyExperiment())
    assert (exp.train.steps, exp.train.optim.lr, exp.train.optim.warmup_steps) == (7, 0.25, 3)
    assert (exp.model.hidden, exp.train.batch_size, exp.train.deterministic) == (20, 4, True)
    with pytest.raises(ValueError, match=r"train.steps: expected an integer; got 'many'"):
        resolve_config(parser.parse_args(["--set", "train.steps=many"]), ToyExperiment())
    for flags, message in ((["--set", "train.optim.lr=-1"], r"OptimConfig.lr must be > 0; got -1.0"),
                           (["--set", "train.optim.min_lr_ratio=2"], r"min_lr_ratio must be in \[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            resolve_config(parser.parse_args(flags), ToyExperiment())


def test_load_trained_model_from_a_run_or_a_checkpoint(finished_run):
    from ssm_core.train import load_trained_model
    final = load_trained_model(finished_run)
    from_ckpt = load_trained_model(finished_run / "checkpoints" / "step-00000002.ckpt")
    assert not final.training and type(final).__name__ == "ToyModel"
    state = load_checkpoint(finished_run / "checkpoints" / "step-00000002.ckpt")["model"]
    for name, tensor in from_ckpt.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert not torch.equal(final.head.weight, from_ckpt.head.weight)  # step 4 vs step 2


def test_two_process_ddp_and_fsdp_match_single_process_with_the_same_global_batch(tmp_path):
    flags = ["--steps", 6, "--batch-size", 8, "--device", "cpu", "--deterministic", "--set", "model.dropout=0",
             "--set", "train.eval_every=3"]
    run_cli("--out", tmp_path / "single", *flags)
    single = train_losses(tmp_path / "single")
    a = load_file(tmp_path / "single" / "model.safetensors")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    for parallel in ("ddp", "fsdp"):
        run = tmp_path / parallel
        run_cli("--out", run, *flags, "--set", f"train.parallel={parallel}", launcher=torchrun)
        losses = train_losses(run)
        assert single.keys() == losses.keys() == set(range(1, 7))
        for step in single:
            assert losses[step] == pytest.approx(single[step], rel=1e-5), (parallel, step)
        b = load_file(run / "model.safetensors")
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
        assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [6]  # rank 0 writes, once


if __name__ == "__main__":
    main()


def test_epoch_aware_datasets_draw_anew_each_epoch():
    """Items of datasets with `set_epoch` (random windows, crops) depend on the epoch the sampler is in."""
    from ssm_core.train.data import EpochIndexed, StepBatchSampler

    class Windows(torch.utils.data.Dataset):
        epoch = 0

        def set_epoch(self, e):
            self.epoch = e

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return (self.epoch, i)

    sampler = StepBatchSampler(3, batch_size=3, grad_accum=1, rank=0, world_size=1, seed=0, start_step=0, steps=3)
    data = EpochIndexed(Windows())
    seen = [[data[i] for i in batch] for batch in sampler]
    assert [sorted(b) for b in seen] == [[(e, 0), (e, 1), (e, 2)] for e in range(3)]


def test_a_warmup_as_long_as_the_run_is_cut_to_a_tenth_with_a_warning(tmp_path, caplog):
    from ssm_core.train.config import OptimConfig
    from ssm_core.train.engine import lr_multiplier

    optim = OptimConfig(warmup_steps=100)  # a recipe's warm-up under --steps 30
    assert lr_multiplier(2, 30, optim) == 1.0  # the peak rate is reached after 3 steps, not never
    assert max(lr_multiplier(s, 30, optim) for s in range(30)) == 1.0
    assert lr_multiplier(49, 1000, optim) == 0.5  # a warm-up shorter than the run is kept
    exp = ToyExperiment()
    exp.train.optim.warmup_steps = 100
    with caplog.at_level(logging.WARNING, logger="ssm_core"):
        train(ToyTask(exp), exp.train, tmp_path / "run")
    assert "train.optim.warmup_steps 100 is not shorter than the run (30 steps): warming up over 3 steps" \
        in caplog.text
    lr = [float(value) for _, metric, value in logged_values(tmp_path / "run") if metric == "train/lr"]
    assert max(lr[:3]) == pytest.approx(exp.train.optim.lr)  # was 30% of it: the warm-up never ended


def test_a_long_run_is_announced_with_its_estimated_length(tmp_path, caplog, monkeypatch):
    from ssm_core.train import engine

    exp = ToyExperiment(step_sleep=0.01)
    exp.train.steps = 20
    monkeypatch.setattr(engine, "LONG_RUN_S", 0.05)  # 14 steps left at >= 0.01 s each: "long"
    with caplog.at_level(logging.WARNING, logger="ssm_core"):
        train(ToyTask(exp), exp.train, tmp_path / "run")
    assert "this run looks long: 14 steps left at" in caplog.text
    assert "(an estimate from the last 5 steps" in caplog.text
    caplog.clear()
    monkeypatch.setattr(engine, "LONG_RUN_S", 3600.0)
    with caplog.at_level(logging.WARNING, logger="ssm_core"):
        train(ToyTask(exp), exp.train, tmp_path / "run2")
    assert "looks long" not in caplog.text


def test_the_log_window_keeps_no_autograd_graph():
    """A task metric computed from the model's output (requiring grad) is summed detached, so the window holds no
    step's graph until it is logged, and saving it warns of nothing."""
    import warnings

    from ssm_core.train.engine import _LogWindow
    window = _LogWindow()
    weight = torch.ones(3, requires_grad=True)
    for _ in range(2):
        window.add(1.0, 0.5, {"accuracy": (weight * 0.5).mean()}, units=4)
    assert not window.task_sums["accuracy"].requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert window.state_dict()["task"] == {"accuracy": 1.0}
